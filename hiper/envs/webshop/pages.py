"""The WebShop page state machine and its text-mode rendering, without HTML.

The original renders a Flask template, parses it back with BeautifulSoup and joins every visible text
node with ``' [SEP] '`` (``observation_mode='text'``). This module produces the same string directly
from a small state object. The text-node rules it reproduces:

* each template text node is ``strip()``-ed; BeautifulSoup first collapses a node made only of ASCII
  whitespace to ``'\\n'`` (dropped) when it contains a newline, else to ``' '`` (kept as an empty part);
* an empty template value produces no node at all;
* ``<script>``/``<head>`` text and comments are invisible, ``display:none`` blocks are *not* (the done
  page shows its hidden "Purchased"/"Target" table).

Clickables (``text_to_clickable``) are, in page order, the lower-cased text of ``.btn`` buttons and
``.product-link`` links, then the radio option values; a value seen twice keeps its first position but
points at the last element with that text (dict semantics).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from hiper.envs.webshop.data import Product

SEP = " [SEP] "
PRODUCT_WINDOW = 10
BASE_URL = "http://127.0.0.1:3000"
END_BUTTON = "buy now"
NEXT_PAGE = "next >"
PREV_PAGE = "< prev"
BACK_TO_SEARCH = "back to search"
SUB_PAGES = {"description": "Description", "features": "Features", "reviews": "Reviews", "attributes": "Attributes"}
_ASCII_SPACE = frozenset(" \n\t\x0c\r")
_ACTION = re.compile(r"(.+)\[(.+)\]")


def parse_action(action: str) -> tuple[str, str | None]:
    """WebShop's ``parse_action``: ``re.match(r'(.+)\\[(.+)\\]')`` -> (name, arg), else (action, None).

    The match is anchored at the start only and greedy, so ``"click[a] trailing"`` is ``("click", "a")``.
    """
    m = _ACTION.match(action)
    if m is None:
        return action, None
    return m.group(1), m.group(2)


def _text_node(parts: list[str], text: str) -> None:
    """Append what BeautifulSoup's text extraction yields for one template text node."""
    if text == "":
        return
    if all(ch in _ASCII_SPACE for ch in text):
        if "\n" not in text:
            parts.append("")
        return
    parts.append(text.strip())


def _flask_tojson(value: Any) -> str:
    """Flask's ``tojson`` filter: sorted keys, ASCII, with <, >, &, ' escaped as \\u sequences."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("'", "\\u0027")


@dataclass
class Clickable:
    kind: str  # "button" | "product-link" | "radio"
    option_name: str | None = None


@dataclass
class PageState:
    """Where the session is: the original's ``user_sessions[sid]`` plus the current URL."""

    kind: str = "index"  # index | results | item | sub | done
    url: str = ""
    keywords: list[str] | None = None
    page: int | None = None
    asin: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    sub_page: str | None = None  # "Description" | "Features" | "Reviews" | "Attributes"
    results: list[Product] = field(default_factory=list)  # the last search's products (<= 50)
    reward: float | None = None
    reward_info: dict[str, Any] | None = None


def page_name(url: str | None) -> str | None:
    """The original's ``get_page_name``: first of these substrings found in the URL ('' = index)."""
    if url is None:
        return None
    for name in ("search_results", "item_page", "item_sub_page", "done"):
        if name in url:
            return name
    return ""


def render(state: PageState, instruction: str, product: Product | None) -> tuple[str, bool, dict[str, Clickable]]:
    """(observation text, has_search_bar, ordered clickables) of the current page."""
    parts: list[str] = []
    clickables: dict[str, Clickable] = {}
    if state.kind == "index":
        _text_node(parts, "WebShop")
        _text_node(parts, "Instruction: ")
        _text_node(parts, instruction)
        _text_node(parts, "Search")
        clickables["search"] = Clickable("button")
        return SEP.join(parts), True, clickables
    if state.kind == "done":
        return _render_done(state), False, clickables

    _text_node(parts, "Instruction:")
    _text_node(parts, instruction)
    _text_node(parts, "Back to Search")
    clickables[BACK_TO_SEARCH] = Clickable("button")
    if state.kind == "results":
        page = state.page or 1
        _text_node(parts, f"Page {page} (Total results: {len(state.results)})")
        if page > 1:
            _text_node(parts, "< Prev")
            clickables[PREV_PAGE] = Clickable("button")
        _text_node(parts, "Next >")
        clickables[NEXT_PAGE] = Clickable("button")
        for item in state.results[(page - 1) * PRODUCT_WINDOW : page * PRODUCT_WINDOW]:
            _text_node(parts, item.asin)
            _text_node(parts, item.title)
            _text_node(parts, item.price_tag)
            clickables[item.asin.lower()] = Clickable("product-link")
        return SEP.join(parts), False, clickables

    if product is None:
        raise RuntimeError(f"page {state.kind!r} needs a product but the session has none")
    _text_node(parts, "< Prev")
    clickables[PREV_PAGE] = Clickable("button")
    if state.kind == "item":
        radios: list[tuple[str, str]] = []
        for option_name, values in product.options.items():
            _text_node(parts, option_name)
            for value in values:
                _text_node(parts, value)
                radios.append((value, option_name))
        _text_node(parts, product.title)
        _text_node(parts, f"Price: {product.price_tag}")
        _text_node(parts, f"Rating: {product.rating}")
        for label in ("Description", "Features", "Reviews"):
            _text_node(parts, label)
            clickables[label.lower()] = Clickable("button")
        _text_node(parts, "Buy Now")
        clickables[END_BUTTON] = Clickable("button")
        for value, option_name in radios:
            clickables[value] = Clickable("radio", option_name)
        return SEP.join(parts), False, clickables

    # sub pages
    if state.sub_page == "Description":
        _text_node(parts, product.description)
    elif state.sub_page == "Features":
        for bullet in product.bullet_points:
            _text_node(parts, " " + str(bullet))
    elif state.sub_page == "Attributes":
        for attribute in product.attributes:
            _text_node(parts, " " + attribute)
        _text_node(parts, product.category)
        _text_node(parts, product.query)
        _text_node(parts, product.product_category)
    # Reviews: the 1k catalogue has no reviews, the page shows nothing more
    return SEP.join(parts), False, clickables


def _render_done(state: PageState) -> str:
    parts: list[str] = []
    for text in (
        "Thank you for shopping with us!",
        "Your code: ",
        "None",  # mturk_code is None and Jinja prints it
        " (Paste it in your MTurk interface.)",
        "Purchased",
        "asin",
        state.asin or "",
        "options",
        _flask_tojson(state.options),
        "attrs",
        "None",
        "category",
        "None",
        "query",
        "None",
        "product category",
        "None",
        "Target",  # the goal is not passed to the template: its fields render empty
        "asin",
        "options",
        "attrs",
        "price upper",
        "instuction text",
        "category",
        "product category",
        "query",
        "Goal ",
        "None",
        "Reward",
        "Your score (min 0.0, max 1.0)",
        str(state.reward),
        "Reward Details ",
        "None",
    ):
        _text_node(parts, text)
    return SEP.join(parts)

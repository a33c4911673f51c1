"""WebShop's purchase reward (the semantics of ``goal.get_reward``), with spaCy replaced by a table.

::

    total  = (n_attr_matched + n_option_matched + (price <= price_upper))
             / (len(goal.attributes) + len(goal.goal_options) + 1)
    reward = total * r_type

* attributes: a goal attribute matches if some product attribute has ``token_set_ratio > 85``, else
  if it is a substring of the lower-cased title, bullet points (joined by spaces) or description;
* options: purchased option values and goal options go through :func:`normalize_color`; for
  synthetic goals the goal options are the dict's ``(name, value)`` *items* (the original passes
  ``dict.items()``), so ``normalize_color`` only maps a tuple whose name or value *equals* a colour
  word, and thefuzz compares the tuple's text ``"color coal grey"``. A goal option matches if some
  purchased value has ``token_set_ratio > 85``;
* type factor ``r_type`` from query / category / noun-overlap of the product names, where the nouns
  (spaCy ``en_core_web_sm`` NOUN/PROPN tokens) come from ``name_nouns_en_core_web_sm_3.8.0.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hiper.envs.webshop.data import Product
from hiper.envs.webshop.fuzz import token_set_ratio

#: WebShop's normalize.COLOR_SET, in its order (the first colour found wins)
COLOR_SET = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black", "blue", "blush",
    "bordeaux", "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne", "charcoal", "cheetah",
    "chestnut", "chocolate", "christmas", "coffee", "cognac", "copper", "coral", "cranberry", "cream",
    "crystal", "dark", "denim", "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite", "grape",
    "graphite", "grass", "gray", "green", "grey", "heather", "indigo", "ivory", "ivy", "khaki", "lavender",
    "lemon", "leopard", "light", "lilac", "lime", "magenta", "maroon", "mauve", "merlot", "midnight", "mint",
    "mocha", "multicolor", "mushroom", "mustard", "natural", "navy", "nude", "olive", "orange", "peach",
    "pewter", "pink", "plum", "purple", "rainbow", "red", "rose", "royal", "rust", "sand", "sapphire",
    "seashell", "silver", "skull", "slate", "steel", "stone", "stonewash", "sunflower", "tan", "taupe", "teal",
    "tiger", "turquoise", "violet", "walnut", "wheat", "white", "wine", "yellow",
)  # fmt: skip


def normalize_color(option: Any) -> Any:
    """The first colour word ``c`` with ``c in option`` (substring for str, element for tuple), else ``option``."""
    for color in COLOR_SET:
        if color in option:
            return color
    return option


def type_reward(purchased: Product, goal: Mapping[str, Any], nouns: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """``r_type`` and its ingredients. ``nouns`` maps an ASIN to its name's NOUN/PROPN tokens."""
    query_match = purchased.query == goal["query"]
    purchased_cat = {x.strip() for x in purchased.product_category.split("›")}
    goal_cat = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(purchased_cat & goal_cat) >= 2

    purchased_nouns = _nouns_of(purchased.asin, purchased.name, nouns)
    goal_nouns = _nouns_of(goal["asin"], goal["name"], nouns)
    if len(goal_nouns) == 0:
        title_score = 0.2
    else:
        title_score = len(set(purchased_nouns) & set(goal_nouns)) / len(goal_nouns)

    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match, "title_score": title_score}


def _nouns_of(asin: str, name: str, nouns: Mapping[str, Sequence[str]]) -> Sequence[str]:
    if asin in nouns:
        return nouns[asin]
    raise KeyError(
        f"no noun table entry for ASIN {asin!r} (name {name[:60]!r}); the type reward needs the spaCy noun "
        "table name_nouns_en_core_web_sm_3.8.0.json covering every product"
    )


def attribute_reward(purchased: Product, goal_attributes: Sequence[str]) -> tuple[float, int]:
    """(fraction, count) of goal attributes found in the product's attributes or text."""
    title = purchased.title.lower()
    bullets = " ".join(purchased.bullet_points).lower()
    description = purchased.description.lower()
    n_matched = 0
    for g_attr in goal_attributes:
        if any(token_set_ratio(p_attr, g_attr) > 85 for p_attr in purchased.attributes):
            n_matched += 1
        elif g_attr in title or g_attr in bullets or g_attr in description:
            n_matched += 1
    return n_matched / len(goal_attributes), n_matched


def option_reward(purchased_options: Sequence[Any], goal_options: Sequence[Any]) -> tuple[float | None, int]:
    """(fraction or None when the goal has no options, count) of goal options matched by a purchased value."""
    purchased_norm = [normalize_color(o) for o in purchased_options]
    goal_norm = [normalize_color(o) for o in goal_options]
    n_matched = 0
    for g_option in goal_norm:
        if any(token_set_ratio(p_option, g_option) > 85 for p_option in purchased_norm):
            n_matched += 1
    return (n_matched / len(goal_norm) if goal_norm else None), n_matched


def get_reward(
    purchased: Product,
    goal: Mapping[str, Any],
    price: float,
    options: Mapping[str, str],
    nouns: Mapping[str, Sequence[str]],
) -> tuple[float, dict[str, Any]]:
    """The raw reward in [0, 1] for buying ``purchased`` at ``price`` with ``options``, and its ``verbose`` info.

    ``goal`` needs the keys asin, name, query, product_category, attributes, goal_options (dict for
    synthetic goals, list for human goals) and price_upper.
    """
    r_type = type_reward(purchased, goal, nouns)
    r_price = (price <= goal["price_upper"]) if goal["price_upper"] > 0 else None
    r_att, n_attr = attribute_reward(purchased, goal["attributes"])
    goal_options = goal["goal_options"]
    goal_option_list = list(goal_options.items()) if isinstance(goal_options, dict) else list(goal_options)
    r_option, n_option = option_reward(list(options.values()), goal_option_list)

    denominator = len(goal["attributes"]) + len(goal_options) + 1
    if r_price is None:  # the original WebShop fails here too (a TypeError); every shipped goal has a price bound
        raise ValueError(f"goal {goal.get('asin')!r} has no positive price_upper: cannot score the price")
    total = (n_attr + n_option + r_price) / denominator * r_type["r_type"]
    info: dict[str, Any] = {
        "r_type": r_type["r_type"],
        "r_att": r_att,
        "w_att": len(goal["attributes"]) / denominator,
        "query_match": r_type["query_match"],
        "category_match": r_type["category_match"],
        "title_score": r_type["title_score"],
    }
    if r_option is not None:
        info["r_option"] = r_option
        info["w_option"] = len(goal_options) / denominator
    if r_price is not None:
        info["r_price"] = r_price
        info["w_price"] = 1 / denominator
    return total, info

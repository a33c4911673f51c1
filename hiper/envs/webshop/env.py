"""``WebShopEnv``: the WebShop text environment (1000-product configuration) behind hiper's env contract.

Behaviour follows the original ``WebAgentTextEnv`` (text mode) as used by verl-agent / GiGPO / HiPER:

* ``search[free text]`` is accepted on any page (lower-cased, split on single spaces, BM25 top 50,
  10 per page); ``click[x]`` works only when ``x`` is a clickable of the current page (and not
  ``search``); anything else (unparseable, unknown clickable, wrong case of the verb) leaves the page
  unchanged with reward 0;
* ``click[buy now]`` ends the episode with the raw reward of :func:`~hiper.envs.webshop.reward.get_reward`;
  the env reward is ``reward_scale * (raw == 1.0)`` (verl-agent: 10 for a win, else 0);
* ``done`` is True on purchase, or after ``max_steps`` steps without purchase (then
  ``info["truncated"] = True``, ``truncation_reason = "max_steps"``). Unlike the original there is no
  auto-reset to a random goal after a purchase.

Observations are the original's text (``WebShop [SEP] Instruction: [SEP] ... [SEP] Search`` etc.).
``info["admissible"]`` lists ``"search[<your query>]"`` when the page has a search bar, then
``"click[<clickable>]"`` for each clickable, exactly as verl-agent's prompt lists them;
:func:`prompt_observation` gives verl-agent's quoted prompt form of an observation.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from hiper.envs.base import ExpertStep, TaskSpec
from hiper.envs.webshop.data import Catalogue, Product, load_catalogue
from hiper.envs.webshop.goals import SPLIT_MODES, split_goals
from hiper.envs.webshop.pages import (
    BACK_TO_SEARCH,
    BASE_URL,
    END_BUTTON,
    NEXT_PAGE,
    PREV_PAGE,
    PRODUCT_WINDOW,
    SEP,
    SUB_PAGES,
    Clickable,
    PageState,
    page_name,
    parse_action,
    render,
)
from hiper.envs.webshop.reward import get_reward
from hiper.envs.webshop.search import SEARCH_RETURN_N, BM25Index

ENV_NAME = "webshop"
SEARCH_PLACEHOLDER = "search[<your query>]"

SUBGOAL_SEARCH = "search for the product"
SUBGOAL_OPEN = "open the target product"
SUBGOAL_OPTIONS = "select the options"
SUBGOAL_BUY = "buy the product"

_INDEXES: dict[str, BM25Index] = {}
_UNSAFE_QUERY_CHARS = re.compile(r"[\[\]\u4e00-\u9fff]")


def search_index(catalogue: Catalogue) -> BM25Index:
    """The BM25 index of ``catalogue`` (built once per data directory, about 2 s)."""
    key = str(catalogue.data_dir)
    if key not in _INDEXES:
        _INDEXES[key] = BM25Index([p.search_contents() for p in catalogue.products], [p.asin for p in catalogue.products])
    return _INDEXES[key]


def parse_split(split: str, default_mode: str) -> tuple[str, str]:
    """``"verl-agent:test"`` -> ("verl-agent", "test"); a bare ``"test"`` uses ``default_mode``."""
    if ":" in split:
        mode, _, name = split.partition(":")
        if mode not in SPLIT_MODES:
            raise ValueError(f"unknown WebShop split mode {mode!r} in split {split!r}; choose one of {SPLIT_MODES}")
        return mode, name
    return default_mode, split


def sanitize_query(text: str) -> str:
    """A search query the action parser and the protocol accept: lower-case, no brackets, no CJK.

    ``[``/``]`` would break ``re.match(r"(.+)\\[(.+)\\]")``; CJK characters make verl-agent's (and
    hiper's) parser flag the whole response invalid.
    """
    return " ".join(_UNSAFE_QUERY_CHARS.sub(" ", text.lower()).split())


def prompt_observation(obs: str, instruction: str) -> str:
    """verl-agent's prompt form: the parts after the instruction, each quoted, joined by ``' [SEP] '``."""
    parts = obs.split(SEP)
    if instruction not in parts:
        return obs
    index = parts.index(instruction)
    return SEP.join(f"'{p}'" for p in parts[index + 1 :])


def prompt_admissible(admissible: list[str]) -> str:
    """verl-agent's admissible-action block: one ``'action',`` per line."""
    return "\n".join(f"'{a}'," for a in admissible)


class WebShopEnv:
    """One WebShop episode at a time (see the module docstring for the semantics).

    Args:
        split_mode: ``"clean"`` (disjoint goal-fixed split, default) or ``"verl-agent"`` (per-seed
            shuffled order, test = first 500 goals). A task's split may also carry its mode as a prefix,
            ``"verl-agent:test"``, which then wins.
        max_steps: steps after which an episode without purchase is truncated.
        reward_scale: env reward for a purchase with raw reward exactly 1.0.
        data_dir: directory with the WebShop data (default ``$HIPER_SHARED/data/webshop``).
        seed: seeds the random number generator of the ``<r>`` random-search keyword.
    """

    family = "webshop"

    def __init__(
        self,
        split_mode: str = "clean",
        max_steps: int = 15,
        reward_scale: float = 10.0,
        data_dir: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        if split_mode not in SPLIT_MODES:
            raise ValueError(f"unknown WebShop split_mode {split_mode!r}; choose one of {SPLIT_MODES}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.split_mode = split_mode
        self.max_steps = int(max_steps)
        self.reward_scale = float(reward_scale)
        self.catalogue = load_catalogue(data_dir)
        self.data_dir = self.catalogue.data_dir
        self.index = search_index(self.catalogue)
        self._rng = random.Random(seed)
        self._attribute_to_asins: dict[str, set[str]] = {}
        for p in self.catalogue.products:
            for a in p.attributes:
                self._attribute_to_asins.setdefault(a, set()).add(p.asin)
        self.task: TaskSpec | None = None
        self.goal: dict[str, Any] | None = None
        self.prices: dict[str, float] = {}
        self.state = PageState()
        self._obs = ""
        self._has_search_bar = False
        self._clickables: dict[str, Clickable] = {}
        self._steps = 0
        self._done = False
        self._truncated = False
        self._score = 0.0
        self._won = False
        self._oracle_query: str | None = None

    # ------------------------------------------------------------------ task panels
    @classmethod
    def tasks(
        cls,
        split: str,
        n: int | None = None,
        seed: int = 0,
        split_mode: str = "clean",
        data_dir: str | Path | None = None,
    ) -> list[TaskSpec]:
        """TaskSpecs of ``split`` ("test", "train", "all"; "valid" in clean mode), first ``n`` if given.

        In ``verl-agent`` mode ``seed`` is the env worker's seed (its own goal order and prices) and the
        returned splits carry the ``"verl-agent:"`` prefix so any env instance resolves them the same way.
        """
        mode, name = parse_split(split, split_mode)
        goals, _ = split_goals(name, mode, seed, data_dir)
        count = len(goals) if n is None else min(int(n), len(goals))
        split_label = name if mode == "clean" else f"{mode}:{name}"
        return [TaskSpec(ENV_NAME, split_label, i, seed) for i in range(count)]

    # ------------------------------------------------------------------ episode API
    def reset(self, task: TaskSpec) -> tuple[str, dict[str, Any]]:
        """Start the episode for ``task`` on the search page."""
        mode, split = parse_split(task.split, self.split_mode)
        goals, prices = split_goals(split, mode, task.seed, self.data_dir)
        if not 0 <= task.index < len(goals):
            raise IndexError(f"task index {task.index} out of range for WebShop split {task.split!r} ({len(goals)} goals)")
        self.task = task
        self.goal = goals[task.index]
        self.prices = prices
        self._steps = 0
        self._done = False
        self._truncated = False
        self._score = 0.0
        self._won = False
        self._oracle_query = None
        self.state = PageState(kind="index", url=f"{BASE_URL}/{task.index}")
        self._refresh()
        return self._obs, self._info()

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Apply ``action`` (``search[...]`` or ``click[...]``); see the module docstring."""
        if self.goal is None:
            raise RuntimeError("WebShopEnv.step() called before reset()")
        if self._done:
            info = self._info()
            info["episode_over"] = True
            return self._obs, 0.0, True, info
        self._steps += 1
        name, arg = parse_action(action if isinstance(action, str) else str(action))
        if arg is not None:
            arg = arg.lower()
        reward = 0.0
        if name == "search" and arg is not None and arg != "":
            self._search(arg.split(" "), page=1)
        elif name == "click" and arg is not None and arg in self._clickables and arg != "search":
            self._click(arg)
        if self.state.kind == "done":
            self._done = True
            self._score = float(self.state.reward or 0.0)
            self._won = self._score == 1.0
            reward = self.reward_scale if self._won else 0.0
        elif self._steps >= self.max_steps:
            self._done = True
            self._truncated = True
        self._refresh()
        return self._obs, reward, self._done, self._info()

    def close(self) -> None:
        """Nothing to release (the index is shared per data directory)."""

    # ------------------------------------------------------------------ state machine
    def _session_id(self) -> str:
        return str(self.task.index if self.task is not None else 0)

    def _top_products(self, keywords: list[str]) -> list[Product]:
        products = self.catalogue.products
        first = keywords[0] if keywords else ""
        if first == "<r>":
            return self._rng.sample(products, k=SEARCH_RETURN_N)
        if first == "<a>":
            asins = self._attribute_to_asins.get(" ".join(keywords[1:]).strip(), set())
            return [p for p in products if p.asin in asins]
        if first == "<c>":
            category = keywords[1].strip() if len(keywords) > 1 else ""
            return [p for p in products if p.category == category]
        if first == "<q>":
            query = " ".join(keywords[1:]).strip()
            return [p for p in products if p.query == query]
        return [products[hit.docid] for hit in self.index.search(" ".join(keywords), k=SEARCH_RETURN_N)]

    def _search(self, keywords: list[str], page: int) -> None:
        st = self.state
        st.kind, st.keywords, st.page, st.asin, st.options, st.sub_page = "results", keywords, page, None, {}, None
        st.results = self._top_products(keywords)
        st.url = f"{BASE_URL}/search_results/{self._session_id()}/{'+'.join(keywords)}/{page}"

    def _item_page(self) -> None:
        st = self.state
        st.kind, st.sub_page = "item", None
        kw = "+".join(st.keywords or [])
        st.url = f"{BASE_URL}/item_page/{self._session_id()}/{st.asin}/{kw}/{st.page}/{json.dumps(st.options)}"

    def _click(self, name: str) -> None:
        st = self.state
        current = page_name(st.url)
        if name == END_BUTTON:
            self._buy()
        elif name == BACK_TO_SEARCH:
            self.state = PageState(kind="index", url=f"{BASE_URL}/{self._session_id()}")
        elif name == NEXT_PAGE and current == "search_results":
            self._search(st.keywords or [], (st.page or 1) + 1)
        elif name == PREV_PAGE and current == "search_results":
            self._search(st.keywords or [], (st.page or 1) - 1)
        elif name == PREV_PAGE and current == "item_sub_page":
            self._item_page()
        elif name == PREV_PAGE and current == "item_page":
            self._search(st.keywords or [], st.page or 1)
        elif name in SUB_PAGES:
            st.kind, st.sub_page = "sub", SUB_PAGES[name]
            kw = "+".join(st.keywords or [])
            st.url = (
                f"{BASE_URL}/item_sub_page/{self._session_id()}/{st.asin}/{kw}/{st.page}/{st.sub_page}/{st.options}"
            )
        else:
            clickable = self._clickables[name]
            if clickable.kind == "product-link":
                st.asin = name.upper()
            elif clickable.kind == "radio" and clickable.option_name is not None:
                st.options[clickable.option_name] = name
            if st.asin is None or st.asin not in self.catalogue.by_asin:
                return  # the original would crash rendering an item page without a product
            self._item_page()

    def _buy(self) -> None:
        st = self.state
        assert self.goal is not None
        product = self.catalogue.by_asin[st.asin] if st.asin else None
        if product is None:
            return
        price = self.prices.get(product.asin, 100.0)
        reward, info = get_reward(product, self.goal, price, st.options, self.catalogue.nouns)
        st.kind, st.reward, st.reward_info = "done", reward, info
        st.url = f"{BASE_URL}/done/{self._session_id()}/{st.asin}/{st.options}"

    def _refresh(self) -> None:
        assert self.goal is not None
        product = self.catalogue.by_asin.get(self.state.asin) if self.state.asin else None
        self._obs, self._has_search_bar, self._clickables = render(self.state, self.goal["instruction_text"], product)
        if self._done:
            self._has_search_bar, self._clickables = False, {}

    # ------------------------------------------------------------------ info
    @property
    def admissible(self) -> list[str]:
        """Available actions as verl-agent lists them (``search[<your query>]`` first if a search bar exists)."""
        actions = [SEARCH_PLACEHOLDER] if self._has_search_bar else []
        actions.extend(f"click[{c}]" for c in self._clickables)
        return actions

    def _info(self) -> dict[str, Any]:
        assert self.goal is not None
        info: dict[str, Any] = {
            "admissible": self.admissible,
            "task": self.goal["instruction_text"],
            "task_type": ENV_NAME,
            "won": self._won,
            "score": self._score,
            "truncated": self._truncated,
            "truncation_reason": "max_steps" if self._truncated else None,
            "step": self._steps,
            "available_actions": {"has_search_bar": self._has_search_bar, "clickables": list(self._clickables)},
            "task_score": self._score,
            "page": self.state.kind,
            "goal_asin": self.goal["asin"],
            "goal_options": dict(self.goal["goal_options"]),
        }
        if self.state.kind == "done":
            info["purchased_asin"] = self.state.asin
            info["purchased_options"] = dict(self.state.options)
            info["reward_info"] = self.state.reward_info
        return info

    # ------------------------------------------------------------------ oracle
    def _choose_oracle_query(self) -> str:
        """The query (instruction or product title) that ranks the target best; ties prefer the instruction."""
        assert self.goal is not None
        target = self.goal["asin"]
        candidates = [self.goal["instruction_text"], self.catalogue.by_asin[target].title]
        best, best_rank = sanitize_query(candidates[0]), SEARCH_RETURN_N + 1
        for text in candidates:
            query = sanitize_query(text)
            hits = self.index.search(query) if query else []
            ranks = [i for i, hit in enumerate(hits) if self.catalogue.products[hit.docid].asin == target]
            if ranks and ranks[0] < best_rank:
                best, best_rank = query, ranks[0]
        return best

    def expert(self) -> ExpertStep:
        """The oracle's next step: search, open the target product, select the goal options, buy."""
        if self.goal is None:
            raise RuntimeError("WebShopEnv.expert() called before reset()")
        if self._done:
            raise RuntimeError("WebShopEnv.expert(): the episode is over")
        st, target = self.state, self.goal["asin"]
        if self._oracle_query is None:
            self._oracle_query = self._choose_oracle_query()
        if st.kind == "index":
            return ExpertStep(SUBGOAL_SEARCH, f"search[{self._oracle_query}]")
        if st.kind == "results":
            ranks = [i for i, p in enumerate(st.results) if p.asin == target]
            if not ranks:
                return ExpertStep(SUBGOAL_SEARCH, f"click[{BACK_TO_SEARCH}]")
            target_page = ranks[0] // PRODUCT_WINDOW + 1
            if target_page == st.page:
                return ExpertStep(SUBGOAL_OPEN, f"click[{target.lower()}]")
            return ExpertStep(SUBGOAL_OPEN, f"click[{NEXT_PAGE if target_page > (st.page or 1) else PREV_PAGE}]")
        if st.kind == "sub" or (st.kind == "item" and st.asin != target):
            return ExpertStep(SUBGOAL_OPEN, f"click[{PREV_PAGE}]")
        for option_name, value in sorted(self.goal["goal_options"].items()):
            clickable = self._clickables.get(value)
            if (
                st.options.get(option_name) != value
                and clickable is not None
                and clickable.kind == "radio"
                and clickable.option_name == option_name
                and parse_action(f"click[{value}]") == ("click", value)
            ):
                return ExpertStep(SUBGOAL_OPTIONS, f"click[{value}]")
        return ExpertStep(SUBGOAL_BUY, f"click[{END_BUTTON}]")


def evaluate_oracle(
    split: str = "all",
    split_mode: str = "clean",
    n: int | None = None,
    seed: int = 0,
    max_steps: int = 15,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the oracle on the first ``n`` tasks of ``split``: mean raw score, success rate and step stats."""
    env = WebShopEnv(split_mode=split_mode, max_steps=max_steps, data_dir=data_dir, seed=seed)
    tasks = WebShopEnv.tasks(split, n=n, seed=seed, split_mode=split_mode, data_dir=data_dir)
    scores, wins, steps, truncated = [], 0, [], 0
    for task in tasks:
        env.reset(task)
        done, info = False, dict[str, Any]()
        while not done:
            _, _, done, info = env.step(env.expert().action)
        scores.append(info["score"])
        wins += bool(info["won"])
        steps.append(info["step"])
        truncated += bool(info["truncated"])
    count = len(tasks)
    return {
        "split": split,
        "split_mode": split_mode,
        "n": count,
        "score": sum(scores) / count if count else 0.0,
        "success": wins / count if count else 0.0,
        "mean_steps": sum(steps) / count if count else 0.0,
        "max_steps_used": max(steps) if steps else 0,
        "truncated": truncated,
    }

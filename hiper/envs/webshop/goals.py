"""Synthetic WebShop goals, their seeded order, and the two split modes.

**Goal generation** (the semantics of WebShop's ``get_synthetic_goals``): for every product with a
synthetic instruction, in catalogue order, draw a price cap -- take the first four multiples of 10
(10..990) above the product's price, ``rng.sample(them, 2)`` and keep the larger; with fewer than two
candidates the cap is 1e6 and the instruction has no price clause -- then emit one goal per
combination of option values (option names sorted), with the instruction
``"{instruction}{' with ' + 'name: value, and ...'}{', and price lower than X.00 dollars'}"``.

**Seeded order** (verl-agent's ``WebAgentTextEnv(seed=s)``): ``random.seed(s)``; draw the product
prices (one ``uniform`` per range-priced product); generate the goals (one ``sample`` per product
with >= 2 cap candidates); ``random.seed(s)`` again; ``random.shuffle(goals)``. Every seed therefore
has its own order *and* its own prices and price caps.

**Split modes**

* ``"verl-agent"``: the goal list of the task's seed (the env worker's seed); ``test`` = indices
  0-499, ``train`` = 500+, as in verl-agent / GiGPO / HiPER. Known flaw, reproduced on purpose: each
  seed permutes differently, so one seed's test block mostly overlaps another seed's train block
  (validation worker seed 1000's test goals: 457/500 lie in train seed 0's train block).
* ``"clean"`` (default): one catalogue drawn with seed 0, and a split fixed by goal identity: each
  distinct (asin, options) pair is ranked by the SHA-256 of its canonical text; the first 500 pairs are
  ``test``, the next 500 ``valid``, the rest ``train`` (duplicate goals share a split). Disjoint by
  construction and independent of any seed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from hiper.envs.webshop.data import Catalogue, load_catalogue

PRICE_RANGE = [10.0 * i for i in range(1, 100)]
NO_PRICE_CAP = 1000000
SPLIT_MODES = ("clean", "verl-agent")
VERL_TEST_SIZE = 500
CLEAN_TEST_KEYS = 500
CLEAN_VALID_KEYS = 500
CLEAN_CATALOGUE_SEED = 0


def synthetic_goals(catalogue: Catalogue, prices: dict[str, float], rng: random.Random) -> list[dict[str, Any]]:
    """All synthetic goals in catalogue order, drawing price caps from ``rng`` (see module doc)."""
    goals: list[dict[str, Any]] = []
    for product in catalogue.products:
        if product.instruction_text is None:
            continue
        attributes = product.instruction_attributes or []
        if not attributes:
            raise ValueError(f"product {product.asin} has an instruction but no instruction_attributes")
        candidates = [p for p in PRICE_RANGE if p > prices[product.asin]][:4]
        if len(candidates) >= 2:
            _, price_upper = sorted(rng.sample(candidates, 2))
            price_text = f", and price lower than {price_upper:.2f} dollars"
        else:
            price_upper, price_text = NO_PRICE_CAP, ""
        option_names = sorted(product.options)
        for combination in itertools.product(*(product.options[name] for name in option_names)):
            goal_options = dict(zip(option_names, combination))
            option_text = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
            option_text = " with " + option_text if option_text else ""
            goals.append(
                {
                    "asin": product.asin,
                    "category": product.category,
                    "query": product.query,
                    "name": product.title,
                    "product_category": product.product_category,
                    "instruction_text": f"{product.instruction_text}{option_text}{price_text}",
                    "attributes": attributes,
                    "price_upper": price_upper,
                    "goal_options": goal_options,
                }
            )
    return goals


def goal_key(goal: dict[str, Any]) -> str:
    """Canonical identity of a goal: its ASIN and its (sorted) options."""
    return goal["asin"] + "|" + json.dumps(goal["goal_options"], sort_keys=True)


@dataclass(frozen=True)
class GoalSet:
    """A seed's goal list in order, with the product prices drawn for that seed."""

    seed: int
    goals: tuple[dict[str, Any], ...]
    prices: dict[str, float]


def goal_set(seed: int, data_dir: str | Path | None = None, shuffle: bool = True) -> GoalSet:
    """The goals of ``WebAgentTextEnv(seed=seed)``: seeded prices and caps, then the seeded shuffle."""
    catalogue = load_catalogue(data_dir)
    return _goal_set_cached(str(catalogue.data_dir), int(seed), bool(shuffle))


@lru_cache(maxsize=32)
def _goal_set_cached(data_dir: str, seed: int, shuffle: bool) -> GoalSet:
    catalogue = load_catalogue(data_dir)
    rng = random.Random(seed)
    prices = catalogue.prices(rng)
    goals = synthetic_goals(catalogue, prices, rng)
    if shuffle:
        random.Random(seed).shuffle(goals)
    return GoalSet(seed=seed, goals=tuple(goals), prices=prices)


@lru_cache(maxsize=4)
def _clean_splits(data_dir: str) -> dict[str, tuple[int, ...]]:
    """Indices into the unshuffled seed-0 goal list for each clean split, in hash order."""
    goals = _goal_set_cached(data_dir, CLEAN_CATALOGUE_SEED, False).goals
    digest = {i: hashlib.sha256(goal_key(g).encode("utf-8")).hexdigest() for i, g in enumerate(goals)}
    order = sorted(range(len(goals)), key=lambda i: (digest[i], i))
    key_rank: dict[str, int] = {}
    for i in order:
        key_rank.setdefault(digest[i], len(key_rank))
    splits: dict[str, list[int]] = {"test": [], "valid": [], "train": []}
    for i in order:
        rank = key_rank[digest[i]]
        if rank < CLEAN_TEST_KEYS:
            splits["test"].append(i)
        elif rank < CLEAN_TEST_KEYS + CLEAN_VALID_KEYS:
            splits["valid"].append(i)
        else:
            splits["train"].append(i)
    splits_out = {k: tuple(v) for k, v in splits.items()}
    splits_out["all"] = tuple(order)
    return splits_out


def split_goals(
    split: str, split_mode: str = "clean", seed: int = 0, data_dir: str | Path | None = None
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The goals of ``split`` (in panel order) and the product prices they were drawn with.

    ``seed`` is the env worker seed in ``verl-agent`` mode and ignored in ``clean`` mode.
    """
    if split_mode not in SPLIT_MODES:
        raise ValueError(f"unknown WebShop split_mode {split_mode!r}; choose one of {SPLIT_MODES}")
    data_path = str(load_catalogue(data_dir).data_dir)
    if split_mode == "verl-agent":
        gs = _goal_set_cached(data_path, int(seed), True)
        if split == "test":
            return list(gs.goals[:VERL_TEST_SIZE]), gs.prices
        if split == "train":
            return list(gs.goals[VERL_TEST_SIZE:]), gs.prices
        if split == "all":
            return list(gs.goals), gs.prices
        raise ValueError(f"unknown split {split!r} for split_mode='verl-agent'; use 'test', 'train' or 'all'")
    gs = _goal_set_cached(data_path, CLEAN_CATALOGUE_SEED, False)
    splits = _clean_splits(data_path)
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for split_mode='clean'; use one of {sorted(splits)}")
    return [gs.goals[i] for i in splits[split]], gs.prices

"""WebShop goals: seeded order equal to the original for seeds 0 and 1000, and the two split modes."""

from __future__ import annotations

import json

import pytest

from hiper.envs.webshop.data import WebShopDataMissing, default_data_dir, load_catalogue
from hiper.envs.webshop.goals import goal_key, goal_set, split_goals

pytestmark = pytest.mark.webshop

DATA = default_data_dir()
FIXTURE = DATA / "fixtures" / "goal_order_seed0_seed1000.json"


@pytest.fixture(scope="module", autouse=True)
def _data():
    try:
        load_catalogue(DATA)
    except WebShopDataMissing as e:
        pytest.skip(f"WebShop data missing: {e}")


@pytest.mark.parametrize("seed", [0, 1000])
def test_goal_order_equals_original(seed):
    if not FIXTURE.is_file():
        pytest.skip(f"fixture {FIXTURE} missing")
    expected = json.loads(FIXTURE.read_text(encoding="utf-8"))[str(seed)]
    got = [[g["asin"], g["instruction_text"]] for g in goal_set(seed).goals]
    assert len(got) == 6910
    assert got == expected


def test_goal_counts_and_price_caps():
    goals = goal_set(0).goals
    assert len({g["asin"] for g in goals}) == 415
    assert len({goal_key(g) for g in goals}) == 6901
    no_cap = [g for g in goals if g["price_upper"] == 1000000]
    assert len(no_cap) == 15 and all("price lower than" not in g["instruction_text"] for g in no_cap)
    prices = goal_set(0).prices
    for g in goals:  # the larger of 2 of the first 4 multiples of 10 above the price: never the first
        if g["price_upper"] != 1000000:
            assert prices[g["asin"]] + 10 < g["price_upper"] <= prices[g["asin"]] + 40


def test_verl_agent_split_reproduces_the_known_overlap():
    test_1000 = {goal_key(g) for g in split_goals("test", "verl-agent", seed=1000)[0]}
    train_0 = {goal_key(g) for g in split_goals("train", "verl-agent", seed=0)[0]}
    assert len(split_goals("test", "verl-agent", seed=0)[0]) == 500
    assert len(split_goals("train", "verl-agent", seed=0)[0]) == 6410
    assert len(test_1000 & train_0) == 457  # documented: the "test set" is not held out


def test_clean_split_is_disjoint_and_seed_independent():
    keys = {s: {goal_key(g) for g in split_goals(s, "clean")[0]} for s in ("test", "valid", "train")}
    assert not keys["test"] & keys["train"]
    assert not keys["valid"] & keys["train"]
    assert not keys["test"] & keys["valid"]
    sizes = {s: len(split_goals(s, "clean")[0]) for s in ("test", "valid", "train", "all")}
    assert sizes["test"] + sizes["valid"] + sizes["train"] == sizes["all"] == 6910
    assert len(keys["test"]) == len(keys["valid"]) == 500
    assert split_goals("test", "clean", seed=0)[0] == split_goals("test", "clean", seed=123)[0]


def test_unknown_split_or_mode_raises():
    with pytest.raises(ValueError, match="unknown split"):
        split_goals("valid", "verl-agent")
    with pytest.raises(ValueError, match="split_mode"):
        split_goals("test", "upstream")

"""WebShopEnv: env contract, observation format per page, action semantics, truncation, oracle."""

from __future__ import annotations

import pytest

from hiper.envs import INFO_KEYS, ExpertEnv, TaskSpec, TextEnv, check_info, make_env, task_panel
from hiper.envs.webshop.data import WebShopDataMissing, default_data_dir, load_catalogue

pytest.importorskip("nltk")
pytestmark = pytest.mark.webshop

GOAL0 = (
    "Find me straight leg, machine washable men's jeans with color: coal grey, and size: 36w x 32l, "
    "and price lower than 80.00 dollars"
)
TITLE0 = "J. Crew - Men's - Sutton Straight-Fit Flex Chino (Multiple Size/Color Options)"


@pytest.fixture(scope="module", autouse=True)
def _require_data():
    try:
        load_catalogue(default_data_dir())
    except WebShopDataMissing as e:
        pytest.skip(f"WebShop data missing: {e}")


@pytest.fixture(scope="module")
def env():
    from hiper.envs.webshop import WebShopEnv

    return WebShopEnv(split_mode="verl-agent")


@pytest.fixture()
def goal0(env):
    """Task 0 of verl-agent seed 0: the documented oracle episode (B07GYWW3NY, coal grey, 36w x 32l)."""
    obs, info = env.reset(TaskSpec("webshop", "test", 0, 0))
    return obs, info


def test_contract_and_registry(env, goal0):
    obs, info = goal0
    assert isinstance(env, TextEnv) and isinstance(env, ExpertEnv) and env.family == "webshop"
    check_info(info)
    assert set(INFO_KEYS) <= set(info)
    assert info["task"] == GOAL0 and info["task_type"] == "webshop" and info["step"] == 0
    assert (info["won"], info["score"], info["truncated"], info["truncation_reason"]) == (False, 0.0, False, None)
    panel = task_panel("webshop", "test", n=3, split_mode="verl-agent")
    assert [t.split for t in panel] == ["verl-agent:test"] * 3
    other = make_env("webshop")  # clean mode by default; the split prefix still selects verl-agent goals
    assert other.reset(panel[0])[1]["task"] == GOAL0
    assert len(task_panel("webshop", "test")) == 501


def test_search_page_observation(goal0):
    obs, info = goal0
    assert obs == f"WebShop [SEP] Instruction: [SEP] {GOAL0} [SEP] Search"
    assert info["admissible"] == ["search[<your query>]", "click[search]"]
    assert info["available_actions"] == {"has_search_bar": True, "clickables": ["search"]}


def test_results_page_and_pagination(env, goal0):
    obs, _, done, info = env.step(f"search[{GOAL0}]")
    assert not done
    parts = obs.split(" [SEP] ")
    assert parts[:6] == ["Instruction:", GOAL0, "Back to Search", "Page 1 (Total results: 50)", "Next >", "B07GYWW3NY"]
    assert parts[6:8] == [TITLE0, "$59.5"]
    assert len(parts) == 5 + 3 * 10
    assert info["admissible"][:3] == ["click[back to search]", "click[next >]", "click[b07gyww3ny]"]
    assert "search[<your query>]" not in info["admissible"]  # no search bar on result pages
    obs2, _, _, info2 = env.step("click[next >]")
    assert obs2.split(" [SEP] ")[3:6] == ["Page 2 (Total results: 50)", "< Prev", "Next >"]
    assert info2["admissible"][:3] == ["click[back to search]", "click[< prev]", "click[next >]"]
    obs3, *_ = env.step("click[< prev]")
    assert obs3 == obs


def test_item_page_options_and_subpages(env, goal0):
    env.step(f"search[{GOAL0}]")
    obs, _, _, info = env.step("click[b07gyww3ny]")
    assert obs == (
        f"Instruction: [SEP] {GOAL0} [SEP] Back to Search [SEP] < Prev [SEP] size [SEP] 32w x 30l [SEP] 32w x 32l "
        "[SEP] 34w x 30l [SEP] 34w x 32l [SEP] 36w x 30l [SEP] 36w x 32l [SEP] color [SEP] charcoal dust [SEP] "
        f"coal grey [SEP] navy [SEP] overcast blue [SEP] khaki [SEP] {TITLE0} [SEP] Price: $59.5 [SEP] "
        "Rating: N.A. [SEP] Description [SEP] Features [SEP] Reviews [SEP] Buy Now"
    )
    assert info["admissible"][:6] == [
        "click[back to search]", "click[< prev]", "click[description]", "click[features]", "click[reviews]",
        "click[buy now]",
    ]  # fmt: skip
    assert info["admissible"][6:] == [f"click[{v}]" for v in
        ["32w x 30l", "32w x 32l", "34w x 30l", "34w x 32l", "36w x 30l", "36w x 32l",
         "charcoal dust", "coal grey", "navy", "overcast blue", "khaki"]]  # fmt: skip
    env.step("click[navy]")
    assert env.state.options == {"color": "navy"}
    desc, *_ = env.step("click[description]")
    assert desc.startswith(f"Instruction: [SEP] {GOAL0} [SEP] Back to Search [SEP] < Prev [SEP] ")
    assert desc.split(" [SEP] ")[4] == env.catalogue.by_asin["B07GYWW3NY"].description.strip()
    env.step("click[< prev]")
    reviews, _, _, rinfo = env.step("click[reviews]")
    assert reviews == f"Instruction: [SEP] {GOAL0} [SEP] Back to Search [SEP] < Prev"
    assert rinfo["admissible"] == ["click[back to search]", "click[< prev]"]
    env.step("click[< prev]")
    assert env.state.kind == "item" and env.state.options == {"color": "navy"}
    env.step("click[< prev]")  # item page -> results page, chosen options are cleared
    assert env.state.kind == "results" and env.state.options == {}


def test_features_page_with_empty_bullet_keeps_empty_part(env, goal0):
    # B074F9FBV3's small_description is '': BeautifulSoup keeps the ' ' text node as an empty part
    title = env.catalogue.by_asin["B074F9FBV3"].title.lower().replace("[", " ").replace("]", " ")
    env.step(f"search[{title}]")
    env.step("click[b074f9fbv3]")
    obs, *_ = env.step("click[features]")
    assert obs.endswith("< Prev [SEP] ")


def test_invalid_actions_are_noops_and_search_works_anywhere(env, goal0):
    obs0, _ = goal0
    for bad in ["click[nonexistent]", "Search[shoes]", "search[]", "jump", "click[search]", ""]:
        obs, reward, done, info = env.step(bad)
        assert (obs, reward, done) == (obs0, 0.0, False)
    env.step(f"search[{GOAL0}]")
    env.step("click[b07gyww3ny]")
    obs, _, _, info = env.step("search[blue shoes]")  # accepted on an item page too
    assert env.state.kind == "results" and env.state.keywords == ["blue", "shoes"]
    obs, *_ = env.step("click[back to search]")
    assert obs == obs0 and info["step"] == 9


def test_purchase_reward_and_done_page(env, goal0):
    for action in [f"search[{GOAL0}]", "click[b07gyww3ny]", "click[coal grey]", "click[36w x 32l]"]:
        assert env.step(action)[2] is False
    obs, reward, done, info = env.step("click[buy now]")
    assert (reward, done, info["won"], info["score"], info["truncated"]) == (10.0, True, True, 1.0, False)
    assert info["reward_info"]["r_option"] == 1.0 and info["admissible"] == []
    assert obs.startswith("Thank you for shopping with us! [SEP] Your code: [SEP] None [SEP] (Paste it")
    assert '[SEP] options [SEP] {"color": "coal grey", "size": "36w x 32l"} [SEP]' in obs
    assert obs.endswith("Your score (min 0.0, max 1.0) [SEP] 1.0 [SEP] Reward Details [SEP] None")
    again = env.step("click[buy now]")  # after the end: same obs, no reward, still done
    assert again[:3] == (obs, 0.0, True) and again[3]["episode_over"]


def test_partial_purchase_scores_below_one(env, goal0):
    for action in [f"search[{GOAL0}]", "click[b07gyww3ny]", "click[navy]"]:
        env.step(action)
    _, reward, done, info = env.step("click[buy now]")
    assert done and reward == 0.0 and not info["won"] and 0.0 < info["score"] < 1.0


def test_truncation_at_max_steps():
    from hiper.envs.webshop import WebShopEnv

    env = WebShopEnv(max_steps=3)
    env.reset(WebShopEnv.tasks("test", n=1)[0])
    for step in range(1, 4):
        obs, reward, done, info = env.step("click[nothing]")
        assert reward == 0.0 and info["step"] == step
    assert done and info["truncated"] and info["truncation_reason"] == "max_steps" and not info["won"]
    assert info["score"] == 0.0


def test_expert_subgoals_and_oracle_subset():
    from hiper.envs.webshop import WebShopEnv, evaluate_oracle

    env = WebShopEnv()
    env.reset(WebShopEnv.tasks("test", n=1)[0])
    subgoals = []
    done = False
    while not done:
        step = env.expert()
        subgoals.append(step.subgoal)
        _, _, done, info = env.step(step.action)
    assert subgoals[0] == "search for the product" and subgoals[-1] == "buy the product"
    assert "open the target product" in subgoals
    with pytest.raises(RuntimeError):
        env.expert()
    result = evaluate_oracle("test", "clean", n=150)
    assert result["n"] == 150 and result["truncated"] == 0
    assert result["success"] > 0.85 and result["score"] > 0.97


def test_prompt_helpers(env, goal0):
    from hiper.envs.webshop import prompt_admissible, prompt_observation

    obs, _, _, info = env.step(f"search[{GOAL0}]")
    formatted = prompt_observation(obs, info["task"])
    assert formatted.startswith("'Back to Search' [SEP] 'Page 1 (Total results: 50)' [SEP] 'Next >'")
    assert prompt_admissible(["search[<your query>]", "click[search]"]) == "'search[<your query>]',\n'click[search]',"


def test_reset_rejects_bad_tasks(env):
    with pytest.raises(IndexError):
        env.reset(TaskSpec("webshop", "test", 10_000, 0))
    with pytest.raises(ValueError):
        env.reset(TaskSpec("webshop", "bogus:test", 0, 0))


def test_oracle_queries_are_parser_safe():
    from hiper.envs.webshop.env import sanitize_query
    from hiper.envs.webshop.pages import parse_action

    query = sanitize_query("Men's [2 Pack] 锅巴 Shoes")
    assert query == "men's 2 pack shoes"
    assert parse_action(f"search[{query}]") == ("search", query)

"""The real ALFWorld env (in-process): splits, task panels, the env contract, paper semantics, expert.

Skips when the alfworld extra or the game files are missing. TextWorld game loading is slow (1-3 s
per game), so one module-scoped env is reused.
"""

from __future__ import annotations

import pytest

pytest.importorskip("textworld", reason="needs the alfworld extra: pip install -e '.[alfworld]'")
pytest.importorskip("alfworld", reason="needs the alfworld extra: pip install -e '.[alfworld]'")
pytest.importorskip("fast_downward", reason="needs fast-downward-textworld (alfworld extra)")

from hiper.envs import check_info, make_env, task_panel  # noqa: E402
from hiper.envs.alfworld import SPLIT_SIZES, TASK_TYPES, AlfWorldEnv, game_files, per_type_counts  # noqa: E402
from hiper.envs.base import TaskSpec  # noqa: E402
from hiper.envs.data import alfworld_data_available  # noqa: E402

pytestmark = [
    pytest.mark.alfworld,
    pytest.mark.skipif(not alfworld_data_available(), reason="ALFWorld game files not found (see docs/envs_alfworld.md)"),
]


@pytest.fixture(scope="module")
def env() -> AlfWorldEnv:
    e = AlfWorldEnv()
    yield e
    e.close()


def test_split_sizes_match_the_paper() -> None:
    for split, size in SPLIT_SIZES.items():
        assert len(game_files(split)) == size, split
    assert per_type_counts("valid_unseen") == {
        "pick_and_place": 24,
        "look_at_obj_in_light": 18,
        "pick_clean_then_place": 31,
        "pick_heat_then_place": 23,
        "pick_cool_then_place": 21,
        "pick_two_obj": 17,
    }
    assert sum(per_type_counts("valid_seen").values()) == 140


def test_task_panels_are_stable_and_balanced() -> None:
    all_unseen = AlfWorldEnv.tasks("valid_unseen")
    assert [t.index for t in all_unseen] == list(range(134))
    assert all_unseen[0] == TaskSpec("alfworld", "valid_unseen", 0, 0)
    panel = task_panel("alfworld", "eval_out_of_distribution", n=12)
    assert panel == AlfWorldEnv.tasks("valid_unseen", n=12)  # deterministic
    files = game_files("valid_unseen")
    from hiper.envs.alfworld import task_type_of

    types = [task_type_of(files[t.index]) for t in panel]
    assert sorted(types) == sorted(TASK_TYPES * 2)  # round-robin: 2 of each type
    shuffled = AlfWorldEnv.tasks("valid_unseen", n=12, seed=3)
    assert shuffled == AlfWorldEnv.tasks("valid_unseen", n=12, seed=3) and shuffled != panel
    assert {t.seed for t in shuffled} == {3}
    heat = AlfWorldEnv.tasks("valid_unseen", task_type="pick_heat_then_place")
    assert len(heat) == 23 and all(task_type_of(files[t.index]) == "pick_heat_then_place" for t in heat)
    with pytest.raises(ValueError, match="asked for 135"):
        AlfWorldEnv.tasks("valid_unseen", n=135)


def test_env_contract_and_semantics(env: AlfWorldEnv) -> None:
    task = TaskSpec("alfworld", "valid_unseen", 18)  # put a mug in desk
    obs, info = env.reset(task)
    check_info(info)
    assert "Your task is to: put a mug in desk." in obs
    assert info["task"] == "put a mug in desk."
    assert info["task_type"] == "pick_and_place" and env.family == "household"
    assert info["step"] == 0 and not info["won"] and not info["truncated"]
    assert "help" not in info["admissible"] and "look" in info["admissible"]
    # the expert follows the stored walkthrough without calling the planner ...
    replans = env.n_replans
    first = env.expert()
    assert first.subgoal == "find the mug" and first.action.startswith("go to ")
    obs, reward, done, info = env.step(first.action)
    assert env.n_replans == replans and info["step"] == 1
    # an inadmissible action changes nothing and still counts as a step
    obs, reward, done, info = env.step("fly to the moon")
    assert obs == "Nothing happens." and reward == 0.0 and not done and info["step"] == 2
    # ... and replans from the current state after a deviation
    assert env.expert().action in info["admissible"] and env.n_replans == replans + 1
    rewards = []
    while not done:
        step = env.expert()
        assert step.action in info["admissible"]
        obs, reward, done, info = env.step(step.action)
        rewards.append(reward)
    check_info(info)
    assert info["won"] and info["score"] == 1.0 and not info["truncated"]
    assert rewards[-1] == 10.0 and sum(rewards) == 10.0
    assert env.expert().subgoal == "the task is complete"
    with pytest.raises(RuntimeError, match="is over"):
        env.step("look")
    # re-reset of the loaded game starts over
    obs2, info2 = env.reset(task)
    assert info2["step"] == 0 and not info2["won"]
    with pytest.raises(ValueError, match="out of range"):
        env.reset(TaskSpec("alfworld", "valid_unseen", 134))
    with pytest.raises(ValueError, match="env 'household'"):
        env.reset(TaskSpec("household", "valid_unseen", 0))


def test_step_limit_truncates(env: AlfWorldEnv) -> None:
    env.reset(TaskSpec("alfworld", "valid_unseen", 18))
    old = env.max_steps
    env.max_steps = 3  # same semantics as AlfWorldEnv(max_steps=3), without loading the game again
    try:
        results = [env.step("look") for _ in range(3)]
    finally:
        env.max_steps = old
    assert [r[2] for r in results] == [False, False, True]
    info = results[-1][3]
    # terminal by default, as TextWorld's limit wrapper returns done=True and the official rollout stores it
    assert not info["truncated"] and info["truncation_reason"] is None and not info["won"]
    assert results[-1][1] == 0.0


def test_registry_and_reward_scale() -> None:
    e = make_env("alfworld", reward_scale=1.0, max_steps=50)
    assert isinstance(e, AlfWorldEnv) and e.reward_scale == 1.0 and e.max_steps == 50
    e.close()
    with pytest.raises(ValueError, match="max_steps"):
        AlfWorldEnv(max_steps=0)

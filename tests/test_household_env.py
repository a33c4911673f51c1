"""Contract tests of the embedded household world: info keys, rewards, truncation, no-ops, splits."""

from __future__ import annotations

import random

import pytest

from hiper.envs import INFO_KEYS, ExpertEnv, TaskSpec, TextEnv, check_info, make_env, task_panel
from hiper.envs.household import BASE_TASK_TYPES, PRESETS, HouseholdConfig, HouseholdEnv


def _play_expert(env: HouseholdEnv, task: TaskSpec) -> list[tuple[str, str, str, float, bool, dict]]:
    """Expert rollout: list of (subgoal, action, obs, reward, done, info)."""
    env.reset(task)
    out, done = [], False
    while not done:
        e = env.expert()
        obs, reward, done, info = env.step(e.action)
        out.append((e.subgoal, e.action, obs, reward, done, info))
    return out


def test_registry_and_protocols() -> None:
    env = make_env("household")
    assert isinstance(env, HouseholdEnv) and env.family == "household"
    assert isinstance(env, TextEnv) and isinstance(env, ExpertEnv)
    panel = task_panel("household", "valid_seen", n=5)
    assert panel == [TaskSpec("household", "valid_seen", i, 0) for i in range(5)]
    env.close()


def test_reset_observation_and_info_keys() -> None:
    env = HouseholdEnv()
    obs, info = env.reset(TaskSpec("household", "train", 3, 0))
    check_info(info)
    assert set(INFO_KEYS) <= set(info)
    assert obs.startswith("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room.")
    assert f"\n\nYour task is to: {info['task']}" in obs
    assert info["step"] == 0 and info["won"] is False and info["score"] == 0.0
    assert info["truncated"] is False and info["truncation_reason"] is None
    assert info["task_type"] in BASE_TASK_TYPES
    adm = info["admissible"]
    assert adm == sorted(adm) and "look" in adm and "inventory" in adm and "help" not in adm
    assert all(a.startswith("go to ") for a in adm if a not in ("look", "inventory"))


def test_winning_step_reward_and_done() -> None:
    env = HouseholdEnv(reward_scale=7.0)
    for task in HouseholdEnv.tasks("valid_seen", n=12):
        traj = _play_expert(env, task)
        *head, last = traj
        assert all(r == 0.0 and not d and not i["won"] for _, _, _, r, d, i in head)
        _, _, _, reward, done, info = last
        assert done and info["won"] and reward == 7.0 and info["score"] == 1.0
        assert not info["truncated"] and info["truncation_reason"] is None
        assert info["step"] == len(traj)
        check_info(info)


@pytest.mark.parametrize("step_limit", ["terminal", "truncated"])
def test_max_steps_ends_the_episode(step_limit: str) -> None:
    """The step limit ends a failed episode: terminal by default (as ALFWorld / TextWorld deliver it), or a
    truncation with ``step_limit="truncated"``."""
    env = HouseholdEnv(max_steps=4, step_limit=step_limit)
    env.reset(TaskSpec("household", "train", 0, 0))
    for k in range(1, 5):
        obs, reward, done, info = env.step("look")
        assert info["step"] == k and reward == 0.0
        assert done == (k == 4)
    assert not info["won"]
    if step_limit == "truncated":
        assert info["truncated"] and info["truncation_reason"] == "max_steps"
    else:
        assert not info["truncated"] and info["truncation_reason"] is None
    with pytest.raises(RuntimeError, match="over"):
        env.step("look")
    with pytest.raises(ValueError, match="step_limit"):
        HouseholdEnv(step_limit="soft")


def test_inadmissible_action_is_a_noop() -> None:
    env = HouseholdEnv()
    obs0, info0 = env.reset(TaskSpec("household", "train", 5, 0))
    for bad in ("help", "fly to the moon", "take apple 99 from fridge 1", "", "open"):
        obs, reward, done, info = env.step(bad)
        assert obs == "Nothing happens." and reward == 0.0 and not done
        assert info["admissible"] == info0["admissible"]
    assert info["step"] == 5
    # the state did not move: "look" still describes the middle of the room
    obs, *_ = env.step("look")
    assert obs.startswith("You are in the middle of a room.")


def test_inadmissible_penalty_charges_only_the_no_op_steps() -> None:
    env = HouseholdEnv(inadmissible_penalty=0.5)
    _, info = env.reset(TaskSpec("household", "train", 5, 0))
    assert env.step("fly to the moon")[1] == -0.5
    assert env.step(info["admissible"][0])[1] == 0.0
    traj = _play_expert(env, TaskSpec("household", "train", 5, 0))  # an expert never pays it
    assert [r for _, _, _, r, _, _ in traj][:-1] == [0.0] * (len(traj) - 1) and traj[-1][3] == 10.0
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="inadmissible_penalty"):
            HouseholdEnv(inadmissible_penalty=bad)


def test_action_normalisation_and_put_alias() -> None:
    env = HouseholdEnv()
    env.reset(TaskSpec("household", "train", 0, 0))
    first = env.expert().action
    obs, *_ = env.step(f"  '{first.upper()}.' ")
    assert obs != "Nothing happens."
    # walk the expert to the first put, then use the ALFWorld 0.4 'move X to Y' alias
    while True:
        e = env.expert()
        if e.action.startswith("put "):
            obj, _, recep = e.action[4:].partition(" in/on ")
            obs, *_ = env.step(f"move {obj} to {recep}")
            assert obs == f"You put the {obj} in/on the {recep}."
            break
        env.step(e.action)


def test_bad_input_errors() -> None:
    env = HouseholdEnv()
    with pytest.raises(RuntimeError):
        env.step("look")
    with pytest.raises(ValueError, match="env"):
        env.reset(TaskSpec("webshop", "train", 0))
    with pytest.raises(ValueError, match="split"):
        env.reset(TaskSpec("household", "nope", 0))
    with pytest.raises(ValueError, match="out of range"):
        env.reset(TaskSpec("household", "valid_seen", 200))
    env.reset(TaskSpec("household", "train", 0))
    with pytest.raises(TypeError):
        env.step(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="difficulty"):
        HouseholdEnv(difficulty="impossible")
    with pytest.raises(ValueError, match="fields"):
        HouseholdEnv(n_rooms=3)
    with pytest.raises(ValueError):
        HouseholdConfig(n_receptacles=(5, 2))


def test_splits_sizes_aliases_and_type_filter() -> None:
    assert len(HouseholdEnv.tasks("train")) == 100_000
    assert len(HouseholdEnv.tasks("valid_seen")) == 200 == len(HouseholdEnv.tasks("valid_unseen"))
    assert HouseholdEnv.tasks("valid", n=3) == HouseholdEnv.tasks("valid_seen", n=3)
    assert HouseholdEnv.tasks("test", n=3) == HouseholdEnv.tasks("valid_unseen", n=3)
    with pytest.raises(ValueError):
        HouseholdEnv.tasks("valid_seen", n=201)
    env = HouseholdEnv()
    for tt in BASE_TASK_TYPES:
        tasks = HouseholdEnv.tasks("valid_unseen", n=4, task_type=tt)
        assert len(tasks) == 4
        for t in tasks:
            assert env.reset(t)[1]["task_type"] == tt
    chain = HouseholdEnv.tasks("train", n=2, task_type="chain", difficulty="chain")
    assert HouseholdEnv(difficulty="chain").reset(chain[0])[1]["task_type"] == "chain"


def test_unseen_split_uses_heldout_combinations() -> None:
    """(task, object, target) combinations of valid_unseen never occur in train / valid_seen."""
    seen = _goal_keys("train", 600) | _goal_keys("valid_seen", 200)
    unseen = _goal_keys("valid_unseen", 200)
    assert len(unseen) > 20 and len(seen) > 100
    assert not (seen & unseen)


def _goal_keys(split: str, n: int) -> set[tuple]:
    env = HouseholdEnv()
    keys = set()
    for t in HouseholdEnv.tasks(split, n=n):
        env.reset(t)
        g = env.world.goal
        keys.add((g.task_type, g.parts, g.look_obj, g.lamp_type))
    return keys


def test_determinism_from_task_spec() -> None:
    rng = random.Random(0)
    for preset in PRESETS:
        tasks = [TaskSpec("household", "train", rng.randrange(100_000), s) for s in (0, 1, 7)]
        for task in tasks:
            a, b = HouseholdEnv(difficulty=preset), HouseholdEnv(difficulty=preset)
            obs_a, info_a = a.reset(task)
            obs_b, info_b = b.reset(task)
            assert obs_a == obs_b and info_a == info_b
            # same random action sequence -> same transcript
            pick = random.Random(task.index)
            for _ in range(15):
                act = pick.choice(info_a["admissible"])
                ra, rb = a.step(act), b.step(act)
                assert ra == rb
                info_a = ra[3]
                if ra[2]:
                    break
    # different seeds / splits give different worlds
    env = HouseholdEnv()
    obs = {env.reset(TaskSpec("household", "train", 11, s))[0] for s in range(5)}
    assert len(obs) > 1
    assert (
        env.reset(TaskSpec("household", "train", 11, 0))[0]
        != env.reset(TaskSpec("household", "valid_seen", 11, 0))[0]
    )


def test_admissible_actions_always_do_something() -> None:
    """Random walks: every admissible action changes or reports state (never 'Nothing happens.')."""
    rng = random.Random(2)
    for preset in PRESETS:
        env = HouseholdEnv(difficulty=preset, max_steps=60)
        for task in HouseholdEnv.tasks("train", n=40, seed=9):
            _, info = env.reset(task)
            done = False
            while not done:
                action = rng.choice(info["admissible"])
                obs, reward, done, info = env.step(action)
                assert obs != "Nothing happens." and obs
                assert reward == (10.0 if info["won"] else 0.0)
                check_info(info)


def test_tiny_preset_is_small() -> None:
    env = HouseholdEnv(difficulty="tiny")
    rng = random.Random(4)
    for task in HouseholdEnv.tasks("train", n=200):
        obs, info = env.reset(task)
        assert len(obs.split()) <= 60 and len(info["admissible"]) <= 15
        done = False
        while not done:
            action = env.expert().action if rng.random() < 0.5 else rng.choice(info["admissible"])
            obs, _, done, info = env.step(action)
            assert len(obs.split()) <= 60 and len(info["admissible"]) <= 15


def test_pickle_mid_episode_continues_identically() -> None:
    """Envs travel to worker processes: a pickled copy continues exactly like the original."""
    import pickle

    env = HouseholdEnv()
    env.reset(TaskSpec("household", "train", 42, 0))
    for _ in range(3):
        env.step(env.expert().action)
    clone = pickle.loads(pickle.dumps(env))
    while not env.done:
        a = env.expert()
        assert clone.expert() == a
        assert env.step(a.action) == clone.step(a.action)


def test_bench_runs() -> None:
    import argparse

    from hiper.bench import household_env

    parser = argparse.ArgumentParser()
    household_env.add_arguments(parser)
    args = parser.parse_args(["--difficulty", "tiny", "--random-steps", "300", "--expert-episodes", "12"])
    out = household_env.run(args)
    assert out["random_steps"] == 300 and out["expert_success"] == 1.0
    assert out["random_steps_per_s"] > 0 and out["expert_episodes_per_s"] > 0


@pytest.mark.parametrize("step_limit", ["terminal", "truncated"])
def test_a_failed_episode_gets_the_official_critic_targets(step_limit: str) -> None:
    """A failed episode ends terminal at the step limit, as the official ALFWorld rollout stores it, so HAE's
    low-level targets in the last segment are the rewards-to-go, with nothing bootstrapped from the critic even
    when ``bootstrap_truncated`` is on (the ALFWorld preset); a ``truncated`` step limit bootstraps (the old
    behaviour, now an explicit choice)."""
    import torch

    from hiper import advantage
    from hiper.advantage.from_batch import advantage_inputs, to_rows
    from hiper.batch import TurnBatch
    from hiper.envs import make_batch
    from hiper.models.tokenizer import household_tokenizer
    from hiper.protocol import chat_prompt, format_response
    from hiper.protocol.spans import TokenByteTable
    from hiper.rollout.loop import run_episodes
    from hiper.rollout.manager import EnvManager

    class Looker:
        def act(self, requests):
            return {r.slot: format_response("SWITCH" if r.turn == 0 else "KEEP", "look around", "look")
                    for r in requests}

    tok = household_tokenizer("household", {"difficulty": "tiny"})
    manager = EnvManager(make_batch("household", difficulty="tiny", max_steps=6, step_limit=step_limit),
                         family="household")
    (traj,) = run_episodes(manager, Looker(), [TaskSpec("household", "train", 0, 0)])
    assert traj.length == 6 and not traj.won
    for rec in traj.turns:
        rec.extras["prompt_ids"] = tok(chat_prompt(tok, rec.prompt), add_special_tokens=False)["input_ids"]
        rec.extras["response_ids"] = tok(rec.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    batch = TurnBatch.from_trajectories([traj], TokenByteTable.from_tokenizer(tok), tok.pad_token_id)
    assert batch.dones.tolist() == [False] * 5 + [step_limit == "terminal"]
    values = {h: torch.full((len(batch),), 3.0) for h in ("low", "high", "term")}
    cfg = advantage.HAEConfig(keep_penalty=-0.3, invalid_penalty=0.1, bootstrap_truncated=True)
    out = advantage.get("hae")(advantage_inputs(batch, values), cfg)
    ret_low = to_rows(batch, out.returns["low"])
    shaped = to_rows(batch, out.shaped_rewards.total)
    rewards_to_go = torch.flip(torch.cumsum(torch.flip(shaped, [0]), 0), [0])
    if step_limit == "terminal":  # one segment (SWITCH at turn 0, then KEEP): pure rewards-to-go, all <= 0
        assert torch.allclose(ret_low, rewards_to_go, atol=1e-6) and bool((ret_low <= 0).all())
    else:  # the truncated last segment bootstraps from the critic's own value (3.0 here)
        assert torch.allclose(ret_low, rewards_to_go + 3.0, atol=1e-6)

"""EnvManager: subgoal carrying, active-only prompting, turn records, grouping, policies."""

from __future__ import annotations

from typing import Any

import pytest

from hiper.envs import InProcessBatch
from hiper.envs.base import ExpertStep, TaskSpec
from hiper.protocol import Switch, format_response, parse_response
from hiper.rollout.loop import run_episodes
from hiper.rollout.manager import EnvManager, grouped
from hiper.rollout.policies import ExpertPolicy, RandomPolicy
from hiper.rollout.records import Trajectory, episode_stats


class CorridorEnv:
    """Walk ``2 + index % 3`` steps forward, then ``open door``. Truncates at ``max_steps``."""

    family = "household"

    def __init__(self, max_steps: int = 10, fail_on: str | None = None) -> None:
        self.max_steps = max_steps
        self.fail_on = fail_on
        self.received: list[str] = []

    def _info(self) -> dict[str, Any]:
        at_door = self.pos == self.length
        return {
            "admissible": ["open door", "wait", "look"] if at_door else ["forward", "wait", "look"],
            "task": "open the door",
            "task_type": "short" if self.length < 3 else "long",
            "won": self.won,
            "score": float(self.won),
            "truncated": False,
            "truncation_reason": None,
            "step": self.steps,
        }

    def reset(self, task: TaskSpec) -> tuple[str, dict[str, Any]]:
        self.length, self.pos, self.steps, self.won = 2 + task.index % 3, 0, 0, False
        return f"You are {self.length} steps from the door. [seed {task.seed}]", self._info()

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if action == self.fail_on:
            raise RuntimeError("boom")
        self.received.append(action)
        self.steps += 1
        if action == "forward" and self.pos < self.length:
            self.pos += 1
        elif action == "open door" and self.pos == self.length:
            self.won = True
        obs = "The door opens." if self.won else f"You are {self.length - self.pos} steps from the door."
        info = self._info()
        done = self.won
        if not done and self.steps >= self.max_steps:
            done = True
            info.update(truncated=True, truncation_reason="max_steps")
        return obs, 10.0 * self.won, done, info

    def expert(self) -> ExpertStep:
        if self.pos < self.length:
            return ExpertStep("walk to the door", "forward")
        return ExpertStep("open the door", "open door")

    def close(self) -> None:
        pass


def tasks(n: int) -> list[TaskSpec]:
    return [TaskSpec("corridor", "train", i) for i in range(n)]


def make_manager(**kw: Any) -> EnvManager:
    env_kw = kw.pop("env_kw", {})
    return EnvManager(InProcessBatch(lambda: CorridorEnv(**env_kw)), family="household", **kw)


def test_expert_solves_and_carries_subgoal() -> None:
    m = make_manager()
    trajs = run_episodes(m, ExpertPolicy(m), tasks(3))
    assert [t.length for t in trajs] == [3, 4, 5]  # 2/3/4 forwards + open door
    for t in trajs:
        assert t.won and t.score == 1.0 and t.finished and not t.truncated
        assert t.total_reward == 10.0
        assert t.n_switches == 2 and t.n_invalid == 0 and t.n_keep_inconsistent == 0
        assert t.turns[0].current_subgoal is None
        for prev, cur in zip(t.turns, t.turns[1:]):
            assert cur.current_subgoal == prev.subgoal  # spec 2.4: last turn's subgoal is the current one
            assert cur.observation == prev.next_observation
            assert f"Current sub-goal: {prev.subgoal}" in cur.prompt
        assert [r.turn for r in t.turns] == list(range(t.length))
        assert t.turns[-1].subgoal == "open the door" and t.turns[-1].switch
    stats = episode_stats(trajs)
    assert stats["success"] == 1.0 and stats["n_episodes"] == 3 and stats["n_turns"] == 12
    assert stats["switch_rate"] == pytest.approx(6 / 12) and stats["invalid_rate"] == 0.0
    assert stats["per_type"] == {
        "long": {"n": 2, "success": 1.0, "score": 1.0},
        "short": {"n": 1, "success": 1.0, "score": 1.0},
    }


def test_only_active_envs_are_prompted() -> None:
    m = make_manager()
    policy = ExpertPolicy(m)
    m.reset(tasks(3))
    counts = []
    while m.active:
        reqs = m.requests()
        counts.append(sorted(r.slot for r in reqs))
        m.step(policy.act(reqs))
    assert counts == [[0, 1, 2]] * 3 + [[1, 2], [2]]
    with pytest.raises(ValueError, match="finished"):
        m.step({0: "x"})
    with pytest.raises(KeyError):
        m.step({7: "x"})


def test_malformed_keep_inconsistent_and_inadmissible() -> None:
    batch = InProcessBatch(CorridorEnv)
    m = EnvManager(batch, family="household")
    m.reset(tasks(1))
    m.step({0: format_response(Switch.SWITCH, "walk to the door", "forward")})
    # malformed: no tags at all -> recorded invalid turn, parser's action ("") goes to the env, subgoal carried
    (rec,) = m.step({0: "I think I should go forward"})
    assert not rec.valid and rec.action == "" and batch.envs[0].received[-1] == ""
    assert rec.current_subgoal == "walk to the door" == rec.subgoal
    assert rec.parsed.decision is Switch.INVALID and not rec.switch
    # KEEP with altered text -> flagged, current subgoal unchanged
    (rec,) = m.step({0: format_response(Switch.KEEP, "walk to the DOOR now", "forward")})
    assert rec.valid and rec.keep_inconsistent and rec.subgoal == "walk to the door"
    # well-formed but inadmissible -> sent as written, valid, not admissible
    (rec,) = m.step({0: format_response(Switch.KEEP, "walk to the door", "fly away")})
    assert rec.valid and rec.action == "fly away" and not rec.admissible_action
    assert batch.envs[0].received[-1] == "fly away"
    (traj,) = m.trajectories()
    assert (
        traj.n_invalid == 1
        and traj.n_keep_inconsistent == 1
        and traj.n_inadmissible == 2
        and not traj.finished
    )


def test_grouped_reset() -> None:
    reps, ids = grouped(tasks(2), 3)
    assert ids == [0, 0, 0, 1, 1, 1] and reps[:3] == [tasks(2)[0]] * 3
    m = make_manager()
    reqs = m.reset(tasks(2), group_size=3)
    assert [r.group for r in reqs] == ids and len({r.prompt for r in reqs[:3]}) == 1
    trajs = run_episodes(m, RandomPolicy(seed=1), tasks(2), group_size=3)
    assert [t.group for t in trajs] == ids and all(t.task == tasks(2)[g] for t, g in zip(trajs, ids))
    trajs = run_episodes(m, RandomPolicy(seed=1), tasks(3), group_ids=[5, 5, 6])
    assert [t.group for t in trajs] == [5, 5, 6]
    with pytest.raises(ValueError):
        m.reset(tasks(2), group_ids=[0, 1], group_size=2)
    with pytest.raises(ValueError):
        grouped(tasks(2), 0)


def test_history_and_injected_renderer() -> None:
    seen: list[dict[str, Any]] = []

    def compact(family: str, **kw: Any) -> str:
        seen.append(kw)
        return f"{family}|{kw['observation']}|{kw['current_subgoal']}|{len(kw['history'])}"

    m = make_manager(renderer=compact, history_length=2, env_kw={"max_steps": 6})
    run_episodes(m, RandomPolicy(seed=0, switch_prob=0.0), [TaskSpec("c", "train", 2)])
    assert [len(kw["history"]) for kw in seen] == [min(i, 2) for i in range(len(seen))]
    assert [kw["step"] for kw in seen] == list(range(len(seen)))
    (traj,) = m.trajectories()
    assert traj.turns[0].prompt.startswith("household|You are 4 steps")
    # the history pairs are (observation before the step, executed action)
    assert seen[3]["history"] == [
        (traj.turns[1].observation, traj.turns[1].action),
        (traj.turns[2].observation, traj.turns[2].action),
    ]


def test_default_renderer_history_length() -> None:
    m = make_manager(history_length=3)
    policy = ExpertPolicy(m)
    m.reset([TaskSpec("c", "train", 2)])
    for _ in range(4):
        m.step(policy.act(m.requests()))
    (req,) = m.requests()
    assert "The last 3 step(s)" in req.prompt and req.turn == 4


def test_truncation_env_and_manager() -> None:
    m = make_manager(env_kw={"max_steps": 3})
    (traj,) = run_episodes(m, RandomPolicy(seed=0), [TaskSpec("c", "train", 2)])
    # 3 steps cannot solve a 4-step corridor: the env truncates
    assert traj.length == 3 and traj.truncated and traj.truncation_reason == "max_steps" and not traj.won
    m = make_manager(max_turns=2)
    (traj,) = run_episodes(m, RandomPolicy(seed=0), [TaskSpec("c", "train", 2)])
    assert traj.length == 2 and traj.truncated and traj.truncation_reason == "max_turns"
    assert episode_stats([traj])["truncated"] == 1.0


def test_env_exception_is_recorded_not_raised() -> None:
    m = make_manager(env_kw={"fail_on": "wait"})
    m.reset(tasks(2))
    recs = m.step({0: format_response("SWITCH", "g", "wait"), 1: format_response("SWITCH", "g", "forward")})
    assert (
        recs[0].done and recs[0].truncated and recs[0].truncation_reason.startswith("env error: RuntimeError")
    )
    assert not recs[1].done and m.active_slots == [1]
    assert recs[0].task_type == "short"  # kept from the last good info


def test_random_policy_deterministic_and_well_formed() -> None:
    def run(seed: int) -> list[Trajectory]:
        return run_episodes(make_manager(env_kw={"max_steps": 8}), RandomPolicy(seed=seed), tasks(4))

    a, b = run(3), run(3)
    assert [[t.response for t in tr.turns] for tr in a] == [[t.response for t in tr.turns] for tr in b]
    for tr in a:
        for t in tr.turns:
            assert parse_response(t.response, strict=True).valid and t.admissible_action
            assert not t.keep_inconsistent


def test_extras_are_recorded_and_step_subsets() -> None:
    m = make_manager()
    m.reset(tasks(2))
    r = format_response("SWITCH", "walk to the door", "forward")
    recs = m.step({1: r}, extras={1: {"logprobs": [-0.5, -0.1]}})
    assert len(recs) == 1 and recs[0].extras == {"logprobs": [-0.5, -0.1]}
    assert [q.turn for q in m.requests()] == [0, 1]  # slot 0 did not advance
    assert m.step({}) == []


def test_manager_validates_arguments() -> None:
    with pytest.raises(ValueError):
        EnvManager(object(), family=None)
    with pytest.raises(ValueError):
        make_manager(history_length=-1)
    with pytest.raises(ValueError):
        make_manager().reset([])


def test_expert_with_unformattable_action_is_recorded_invalid() -> None:
    class CJKEnv(CorridorEnv):
        def expert(self) -> ExpertStep:
            return ExpertStep("buy it", "search[【2 pack】 phone case]")

    m = EnvManager(InProcessBatch(CJKEnv), family="household")
    m.reset(tasks(1))
    (rec,) = m.step(ExpertPolicy(m).act(m.requests()))
    assert not rec.valid and rec.parsed.errors == ("cjk",) and rec.action == "search[【2 pack】 phone case]"


def test_over_long_prompts_drop_the_oldest_history_first() -> None:
    """A prompt over the budget is rendered again without its oldest history pairs until it fits; the turn
    records how many pairs were dropped, and a prompt that fits is untouched."""
    from hiper.envs import make_batch, task_panel
    from hiper.rollout.loop import run_episodes
    from hiper.rollout.policies import ExpertPolicy

    tasks = task_panel("household", "train", n=2, seed=0, difficulty="tiny")
    free = EnvManager(make_batch("household", difficulty="tiny"), family="household", history_length=3)
    full = [t for traj in run_episodes(free, ExpertPolicy(free), tasks) for t in traj.turns]
    budget = max(len(t.prompt) for t in full if t.turn == 1)  # every turn-1 prompt fits, longer histories do not
    tight = EnvManager(make_batch("household", difficulty="tiny"), family="household", history_length=3,
                       prompt_fits=lambda text: len(text) <= budget)
    cut = [t for traj in run_episodes(tight, ExpertPolicy(tight), tasks) for t in traj.turns]
    assert [t.action for t in cut] == [t.action for t in full]  # the expert's episodes are the same
    for a, b in zip(full, cut):
        if len(a.prompt) <= budget:
            assert b.prompt == a.prompt and b.history_dropped == 0
        else:
            assert b.history_dropped >= 1 and (len(b.prompt) <= budget or b.history_dropped == min(a.turn, 3))
            shown = min(a.turn, 3) - b.history_dropped
            assert f"The last {shown} step(s)" in b.prompt or shown == 0
    assert any(t.history_dropped for t in cut)

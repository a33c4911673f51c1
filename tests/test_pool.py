"""EnvPool / LocalEnvBatch: batch API, parallel dispatch, crash / hang / error recovery, recycling.

Uses a cheap fake env (defined here; spawn-started workers import this module by name) so the
fault paths run in a few seconds. The ALFWorld-specific fault test lives in test_alfworld_pool.py.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hiper.envs.base import INFO_KEYS, ExpertStep, StepResult, TaskSpec
from hiper.envs.pool import LOST_EXPERT, EnvPool, LocalEnvBatch, WorkerError


class FakeEnv:
    """Episode of task ``index`` lasts ``index + 2`` steps; special actions misbehave on purpose.

    ``crash`` exits the process, ``hang`` sleeps for an hour, ``raise`` raises ValueError,
    ``meet:<dir>`` waits (up to 20 s) until two processes have written their pid into ``<dir>``.
    """

    family = "household"

    def __init__(self) -> None:
        self.task: TaskSpec | None = None
        self.t = 0

    def reset(self, task: TaskSpec) -> tuple[str, dict[str, Any]]:
        if task.index < 0:
            raise ValueError(f"bad index {task.index}")
        self.task, self.t = task, 0
        return f"start {task.index}", self._info()

    def _info(self, won: bool = False) -> dict[str, Any]:
        return {
            "admissible": ["tick", "crash", "hang", "raise"],
            "task": f"task {self.task.index}",
            "task_type": "fake",
            "won": won,
            "score": float(won),
            "truncated": False,
            "truncation_reason": None,
            "step": self.t,
            "pid": os.getpid(),
        }

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        assert self.task is not None
        if action == "crash":
            os._exit(3)
        if action == "hang":
            time.sleep(3600)
        if action == "raise":
            raise ValueError("asked to raise")
        if action.startswith("meet:"):
            folder = Path(action[5:])
            (folder / str(os.getpid())).touch()
            deadline = time.monotonic() + 20
            while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        self.t += 1
        won = self.t >= self.task.index + 2
        return f"{self.task.index}:{self.t}:{action}", 10.0 * won, won, self._info(won)

    def expert(self) -> ExpertStep:
        return ExpertStep("count to the end", "tick")

    def close(self) -> None:
        self.task = None


def tasks(n: int) -> list[TaskSpec]:
    return [TaskSpec("fake", "test", i) for i in range(n)]


def run_to_end(batch: Any, n: int) -> dict[int, list[StepResult]]:
    batch.reset(tasks(n))
    active = set(range(n))
    log: dict[int, list[StepResult]] = {i: [] for i in range(n)}
    while active:
        plans = batch.expert(sorted(active))
        for slot, res in batch.step({s: plans[s].action for s in sorted(active)}).items():
            log[slot].append(res)
            if res.done:
                active.discard(slot)
    return log


@pytest.fixture(scope="module")
def pool() -> EnvPool:
    with EnvPool(FakeEnv, n_workers=2, timeout_s=2.0) as p:
        yield p


def test_pool_matches_local_batch(pool: EnvPool) -> None:
    got = run_to_end(pool, 5)
    want = run_to_end(LocalEnvBatch(FakeEnv), 5)
    for slot in range(5):
        assert [(r.obs, r.reward, r.done) for r in got[slot]] == [(r.obs, r.reward, r.done) for r in want[slot]]
        assert len(got[slot]) == slot + 2 and got[slot][-1].info["won"]
        assert all(k in got[slot][-1].info for k in INFO_KEYS)
    # slot i runs in worker i % 2
    pids = pool.worker_pids()
    assert {got[s][0].info["pid"] for s in (0, 2, 4)} == {pids[0]}
    assert {got[s][0].info["pid"] for s in (1, 3)} == {pids[1]}
    assert pool.family == "household"


def test_only_requested_slots_are_stepped(pool: EnvPool) -> None:
    pool.reset(tasks(4))
    out = pool.step({2: "tick"})
    assert list(out) == [2] and out[2].obs == "2:1:tick"
    out = pool.step({3: "tick", 2: "tick"})
    assert list(out) == [3, 2] and out[2].obs == "2:2:tick" and out[3].obs == "3:1:tick"


def test_workers_run_in_parallel(pool: EnvPool, tmp_path: Path) -> None:
    # each step blocks until both workers are inside a step: it only completes if the requests
    # were all sent before the pool waited for any reply (else worker 0 waits for a request
    # worker 1 never got, and the 2 s timeout fires)
    pool.reset(tasks(2))
    out = pool.step({0: f"meet:{tmp_path}", 1: f"meet:{tmp_path}"})
    assert not any(r.info["truncated"] for r in out.values()), out
    assert len(list(tmp_path.iterdir())) == 2


def test_env_exception_truncates_only_that_episode(pool: EnvPool) -> None:
    pool.reset(tasks(4))
    pids = pool.worker_pids()
    out = pool.step({0: "raise", 1: "tick", 2: "tick"})
    assert out[0].done and out[0].info["truncated"] and not out[0].info["won"]
    assert out[0].info["truncation_reason"] == "env error: ValueError: asked to raise"
    assert out[0].obs == "" and out[0].reward == 0.0
    assert not out[1].done and not out[2].done
    assert pool.worker_pids() == pids  # the worker survived


def test_worker_crash_mid_step(pool: EnvPool) -> None:
    pool.reset(tasks(6))
    pool.step({s: "tick" for s in range(6)})
    out = pool.step({0: "crash", 1: "tick", 3: "tick"})
    reason = out[0].info["truncation_reason"]
    assert reason == "worker crashed: exit code 3"
    assert out[0].done and out[0].info["truncated"] and out[0].info["task"] == "task 0"
    assert not out[1].info["truncated"] and not out[3].info["truncated"]  # other worker unaffected
    # slots 2 and 4 lived in the crashed worker: their episodes are reported lost at their next step
    assert pool.lost_slots() == {0: reason, 2: reason, 4: reason}
    assert pool.expert([2, 1]) == {2: LOST_EXPERT, 1: ExpertStep("count to the end", "tick")}
    out = pool.step({2: "tick", 4: "tick", 5: "tick"})
    assert out[2].info["truncation_reason"] == reason and out[4].done and out[4].info["truncated"]
    assert not out[5].info["truncated"]
    # the pool keeps serving: the lost slots can be reset and run to the end
    log = run_to_end(pool, 6)
    assert all(log[s][-1].info["won"] for s in range(6))


def test_worker_hang_times_out(pool: EnvPool) -> None:
    pool.reset(tasks(4))
    out = pool.step({0: "hang", 1: "tick", 2: "tick"})
    assert out[0].info["truncation_reason"] == "worker timed out after 2s"
    assert out[2].info["truncation_reason"] == "worker timed out after 2s"  # same worker, queued behind
    assert not out[1].info["truncated"]
    assert pool.faults[-1][1:] == (0, "worker timed out after 2s")
    assert all(log[-1].info["won"] for log in run_to_end(pool, 4).values())


def test_worker_killed_between_steps(pool: EnvPool) -> None:
    pool.reset(tasks(4))
    pool.step({s: "tick" for s in range(4)})
    os.kill(pool.worker_pids()[1], signal.SIGKILL)
    out = pool.step({s: "tick" for s in range(4)})
    assert out[1].info["truncation_reason"] == "worker crashed: killed by SIGKILL"
    assert out[3].info["truncated"] and out[3].done
    assert not out[0].info["truncated"] and not out[2].info["truncated"]
    assert all(log[-1].info["won"] for log in run_to_end(pool, 4).values())


def test_reset_errors_are_raised(pool: EnvPool) -> None:
    with pytest.raises(WorkerError, match="bad index -1"):
        pool.reset([TaskSpec("fake", "test", 0), TaskSpec("fake", "test", -1)])
    with pytest.raises(KeyError, match="never reset"):
        pool.step({99: "tick"})


def test_recycling_restarts_workers() -> None:
    with EnvPool(FakeEnv, n_workers=1, timeout_s=5.0, max_episodes_per_worker=2) as p:
        p.reset(tasks(2))
        first = p.worker_pids()
        p.reset(tasks(2))  # 2 episodes done -> recycled before this reset
        assert p.worker_pids() != first
        assert all(log[-1].info["won"] for log in run_to_end(p, 2).values())
        assert p.faults == []  # recycling is not a fault


def test_local_batch_api() -> None:
    with LocalEnvBatch(FakeEnv) as batch:
        batch.reset(tasks(2))
        out = batch.step({1: "raise"})
        assert out[1].info["truncation_reason"] == "env error: ValueError: asked to raise"
        assert batch.expert([0])[0].action == "tick"
        assert batch.family == "household"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_workers"):
        EnvPool(FakeEnv, n_workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        EnvPool(functools.partial(FakeEnv), n_workers=1, timeout_s=0)


class AdvisingEnv(FakeEnv):
    """Asks to have its worker recycled every 2 episodes (as AlfWorldEnv asks every 200)."""

    max_episodes_per_worker = 2


def test_recycling_follows_the_envs_advice() -> None:
    with EnvPool(AdvisingEnv, n_workers=1, timeout_s=5.0) as p:
        p.reset(tasks(2))
        assert p.recycle_limit == 2
        first = p.worker_pids()
        p.reset(tasks(2))
        assert p.worker_pids() != first and p.recycles == 1
    with EnvPool(AdvisingEnv, n_workers=1, timeout_s=5.0, max_episodes_per_worker=0) as p:
        p.reset(tasks(2))
        first = p.worker_pids()
        p.reset(tasks(2))
        assert p.recycle_limit is None and p.worker_pids() == first

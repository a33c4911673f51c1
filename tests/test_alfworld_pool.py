"""ALFWorld in the worker pool: expert replay on a few games per split, and a worker killed mid-episode.

The full replay (all 134 valid_unseen + 140 valid_seen games, 100% won) is run by
``python -m hiper.envs.alfworld`` and recorded in docs/envs_alfworld.md.
"""

from __future__ import annotations

import functools
import os
import signal

import pytest

pytest.importorskip("textworld", reason="needs the alfworld extra: pip install -e '.[alfworld]'")
pytest.importorskip("alfworld", reason="needs the alfworld extra: pip install -e '.[alfworld]'")
pytest.importorskip("fast_downward", reason="needs fast-downward-textworld (alfworld extra)")

from hiper.envs.alfworld import TASK_TYPES, AlfWorldEnv, format_replay_table, replay_expert  # noqa: E402
from hiper.envs.base import TaskSpec  # noqa: E402
from hiper.envs.data import alfworld_data_available, alfworld_json_dir  # noqa: E402
from hiper.envs.pool import EnvPool  # noqa: E402

pytestmark = [
    pytest.mark.alfworld,
    pytest.mark.slow,
    pytest.mark.skipif(not alfworld_data_available(), reason="ALFWorld game files not found (see docs/envs_alfworld.md)"),
]


@pytest.fixture(scope="module")
def pool() -> EnvPool:
    factory = functools.partial(AlfWorldEnv, data_dir=alfworld_json_dir())
    with EnvPool(factory, n_workers=2, timeout_s=120.0) as p:
        yield p


def play(pool: EnvPool, tasks: list[TaskSpec], kill_worker_after: int | None = None) -> dict[int, dict]:
    """Run the expert on ``tasks`` (slot i = tasks[i]); optionally SIGKILL worker 1 after that many steps."""
    first = pool.reset(tasks)
    last = {slot: info for slot, (_, info) in enumerate(first)}
    active = set(range(len(tasks)))
    n_steps = 0
    while active:
        if n_steps == kill_worker_after:
            os.kill(pool.worker_pids()[1], signal.SIGKILL)
        plans = pool.expert(sorted(active))
        for slot, res in pool.step({s: plans[s].action for s in sorted(active)}).items():
            last[slot] = res.info
            if res.done:
                active.discard(slot)
        n_steps += 1
    return last


def test_expert_replay_handful_per_split(pool: EnvPool) -> None:
    seen_types = set()
    for offset, split in enumerate(("valid_unseen", "valid_seen")):
        tasks = AlfWorldEnv.tasks(split, n=6, seed=7)[offset::2]  # 3 games per split, 6 task types in all
        last = play(pool, tasks)
        seen_types |= {info["task_type"] for info in last.values()}
        assert all(info["won"] and not info["truncated"] for info in last.values()), (split, last)
    assert seen_types == set(TASK_TYPES)


def test_killed_worker_mid_episode(pool: EnvPool) -> None:
    tasks = AlfWorldEnv.tasks("valid_seen", n=4, seed=1)
    old_pids = pool.worker_pids()
    last = play(pool, tasks, kill_worker_after=1)  # kill worker 1 after the first step
    # slots 1 and 3 lived in worker 1: truncated with the reason, never dropped
    for slot in (1, 3):
        assert last[slot]["truncated"] and not last[slot]["won"], last[slot]
        assert last[slot]["truncation_reason"] == "worker crashed: killed by SIGKILL"
        assert last[slot]["task"]  # the episode's last known info is kept
    # the other worker's episodes finished normally
    assert last[0]["won"] and last[2]["won"]
    assert pool.worker_pids()[0] == old_pids[0] and pool.worker_pids()[1] != old_pids[1]
    assert pool.faults[-1][1:] == (1, "worker crashed: killed by SIGKILL")
    # the pool keeps serving: the same slots run new games on the restarted worker
    again = play(pool, AlfWorldEnv.tasks("valid_unseen", n=2, seed=2))
    assert all(info["won"] for info in again.values())


def test_replay_expert_table() -> None:
    result = replay_expert("valid_unseen", n_workers=1, n=1)
    assert result["n_games"] == 1 and result["won"] == 1 and result["failures"] == []
    assert sum(v["n"] for v in result["per_type"].values()) == 1
    table = format_replay_table(result)
    assert "| **all** | 1 | 1 | 100.0% |" in table

"""Guards that keep a bad number out of training: quarantined trajectories and finiteness checks.

A non-finite reward drops its trajectory (logged with env, task and turn; counted as ``train/quarantined``);
non-finite critic values or policy log-probs stop the run with a message naming the likely cause, since no update
could repair them.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from hiper.config.schema import HiperConfig
from hiper.losses import UpdatesDiverged
from hiper.rollout.records import Trajectory

log = logging.getLogger("hiper")


def quarantine(trajs: list[Trajectory], env_name: str) -> tuple[list[Trajectory], int]:
    """Drop trajectories with a non-finite reward (logged with env, task and turn); returns the rest and the count.
    Raises :class:`~hiper.losses.UpdatesDiverged` when nothing is left to train on."""
    keep = []
    for traj in trajs:
        bad = next((t for t in traj.turns if not math.isfinite(t.reward)), None)
        if bad is None:
            keep.append(traj)
        else:
            log.warning("quarantined a trajectory: env %s returned reward %r (task %s, turn %d)", env_name,
                        bad.reward, traj.task, bad.turn)
    if trajs and not keep:
        raise UpdatesDiverged(f"every trajectory of the batch has a non-finite reward (env {env_name}, "
                                     f"task {trajs[0].task}): the env is broken")
    return keep, len(trajs) - len(keep)


#: truncation reasons of episodes cut by a fault of the env (a crashed or hung worker, an exception in ``step``),
#: as :mod:`hiper.envs.pool` reports them; a step limit is not a fault
FAULT_PREFIXES = ("worker crashed", "worker timed out", "env error")


def is_fault(reason: str | None) -> bool:
    """True for a truncation caused by an env fault rather than a step limit."""
    return reason is not None and reason.startswith(FAULT_PREFIXES)


def drop_fault_turns(trajs: list[Trajectory], env_name: str = "") -> tuple[list[Trajectory], int]:
    """Keep turns cut by an env fault out of the loss: the faulted last turn (an empty observation, no reward) is
    removed and the turn before it becomes the truncated end of the episode (the estimators may bootstrap there);
    an episode whose only turn faulted is dropped. Returns the trajectories and the number of faulted episodes;
    raises :class:`UpdatesDiverged` when no turn of the batch is left."""
    out, n_faults = [], 0
    for traj in trajs:
        last = traj.turns[-1] if traj.turns else None
        if last is None or not is_fault(last.truncation_reason):
            out.append(traj)
            continue
        n_faults += 1
        log.warning("env fault: %s (task %s, turn %d); the turn is kept out of the loss", last.truncation_reason,
                    traj.task, last.turn)
        reason = last.truncation_reason
        traj.turns.pop()
        if traj.turns:
            prev = traj.turns[-1]
            prev.done, prev.truncated, prev.truncation_reason = True, True, reason
            out.append(traj)
    if trajs and not out:
        raise UpdatesDiverged(f"env {env_name}: every episode of the batch was cut by an env fault at its first turn "
                              f"(last: {reason}); the env is broken, not the policy")
    return out, n_faults


class FaultCounter:
    """Consecutive faulted episodes of a run; ``limit`` in a row stop it with :class:`UpdatesDiverged`."""

    def __init__(self, env_name: str, limit: int) -> None:
        self.env_name, self.limit, self.run = env_name, limit, 0

    def update(self, trajs: list[Trajectory]) -> None:
        """Count the batch's episodes in order: a faulted one extends the run of faults, a clean one ends it."""
        for traj in trajs:
            reason = traj.turns[-1].truncation_reason if traj.turns else None
            self.run = self.run + 1 if is_fault(reason) else 0
            if self.run >= self.limit:
                raise UpdatesDiverged(f"env {self.env_name}: {self.run} episodes in a row were cut by env faults "
                                      f"(last: {reason}); the env is broken, not the policy: fix it or lower "
                                      "env.n_workers")


def check_finite(cfg: HiperConfig, values: dict[str, Tensor], old_logprobs: Tensor) -> None:
    """Raise :class:`UpdatesDiverged` when the critic values or the policy's log-probs are not finite."""
    for name, x in (("critic values", torch.stack(list(values.values())) if values else None),
                    ("policy log-probs", old_logprobs)):
        if x is not None and not bool(torch.isfinite(x).all()):
            raise UpdatesDiverged(f"{name} are not finite: the model diverged (actor.lr={cfg.actor.lr:g}, "
                                  f"critic.lr={cfg.critic.lr:g}); lower the learning rate and resume from the last "
                                  "checkpoint")


__all__ = ["FAULT_PREFIXES", "FaultCounter", "check_finite", "drop_fault_turns", "is_fault", "quarantine"]

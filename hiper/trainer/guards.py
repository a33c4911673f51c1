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


def check_finite(cfg: HiperConfig, values: dict[str, Tensor], old_logprobs: Tensor) -> None:
    """Raise :class:`UpdatesDiverged` when the critic values or the policy's log-probs are not finite."""
    for name, x in (("critic values", torch.stack(list(values.values())) if values else None),
                    ("policy log-probs", old_logprobs)):
        if x is not None and not bool(torch.isfinite(x).all()):
            raise UpdatesDiverged(f"{name} are not finite: the model diverged (actor.lr={cfg.actor.lr:g}, "
                                  f"critic.lr={cfg.critic.lr:g}); lower the learning rate and resume from the last "
                                  "checkpoint")


__all__ = ["check_finite", "quarantine"]

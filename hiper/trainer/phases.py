"""Running two independent phases of an iteration at once.

Reference log-probs and critic values, and later the critic and actor updates, read the same frozen inputs and
write disjoint models, so they can run on two threads: torch releases the GIL inside its kernels and each thread
uses its own core (``trainer.num_threads: 1`` keeps each phase on one). The results are bit-identical to running
them one after the other (same inputs, same per-phase order of operations, no shared random stream). SFT
(:func:`hiper.trainer.sft.sft_train`) runs the two halves of each micro-batch through :func:`both` too, the second
on a replica of the policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from hiper.config.schema import HiperConfig
from hiper.models.critic import ValueModel

A = TypeVar("A")
B = TypeVar("B")
T = TypeVar("T")


def parallel_ok(cfg: HiperConfig, critic: ValueModel | None) -> bool:
    """Independent phases may run on two threads: with ``trainer.parallel_phases`` and a critic that has its own
    backbone (a shared critic reads the policy's weights while the actor update writes them)."""
    return cfg.trainer.parallel_phases and (critic is None or not critic.shared)


def both(first: Callable[[], A], second: Callable[[], B], *, parallel: bool, times: dict[str, float],
         names: tuple[str, str]) -> tuple[A, B]:
    """``(first(), second())``, the second on a worker thread when ``parallel`` (torch releases the GIL inside its
    kernels, so two independent phases use two cores); each phase's own wall time goes to ``times[names[i]]``."""

    def timed(fn: Callable[[], T], name: str) -> T:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            times[name] = time.perf_counter() - t0

    if not parallel:
        return timed(first, names[0]), timed(second, names[1])
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(timed, second, names[1])
        a = timed(first, names[0])
        return a, future.result()


__all__ = ["both", "parallel_ok"]

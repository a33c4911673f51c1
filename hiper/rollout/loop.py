"""THE rollout loop: reset a batch of envs, then prompt -> respond -> step until every episode ends.

It is written once, as the generator :func:`episodes`, and every caller drives that generator:

* :func:`run_episodes` drives it with a synchronous policy (training, SFT data, eval, benchmarks);
* ``hiper play`` drives it with a human at the keyboard;
* the verl agent loop drives it from ``async`` code, one ``send`` per awaited generation.

::

    loop = episodes(manager, tasks, group_size=1, stats=stats)
    requests = next(loop)                          # resets the envs; one TurnRequest per active env
    while True:
        responses, extras = policy(requests)       # {slot: text}, {slot: {prompt_ids, response_ids, ...}}
        try:
            requests = loop.send((responses, extras))
        except StopIteration as end:
            trajectories = end.value               # one Trajectory per env, in slot order
            break

:class:`LoopStats` times the loop by phase (env resets, env work, policy) and counts turns and generated tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hiper.envs.base import TaskSpec
from hiper.rollout.manager import EnvManager
from hiper.rollout.policies import Policy
from hiper.rollout.records import Trajectory, TurnRecord, TurnRequest

#: what a policy answers for one turn: ``{slot: response text}`` and optional ``{slot: extras}``
Responses = Mapping[int, str]
Extras = Mapping[int, Mapping[str, Any]]
#: the rollout generator: yields each turn's requests, receives ``(responses, extras)``, returns trajectories
EpisodeLoop = Generator[list[TurnRequest], tuple[Responses, "Extras | None"], list[Trajectory]]


@dataclass
class LoopStats:
    """Phase timings (seconds, wall clock) and counts of one or more loop runs; fields accumulate.

    Attributes:
        reset_s: ``manager.reset`` (env resets, first observations).
        env_s: prompt rendering, response parsing and env steps (``manager.requests`` + ``manager.step``).
        policy_s: inside the policy (chat template, tokenization, generation); set by :func:`run_episodes`.
        turns: env turns stepped, summed over envs.
        calls: policy calls (one per loop turn, each over every active env).
        generated_tokens: response tokens the policy recorded (``extras["response_ids"]``).
    """

    reset_s: float = 0.0
    env_s: float = 0.0
    policy_s: float = 0.0
    turns: int = 0
    calls: int = 0
    generated_tokens: int = 0


def episodes(
    manager: EnvManager,
    tasks: Sequence[TaskSpec],
    *,
    group_size: int = 1,
    group_ids: Sequence[int] | None = None,
    on_turn: Callable[[list[TurnRecord]], None] | None = None,
    stats: LoopStats | None = None,
) -> EpisodeLoop:
    """The rollout loop as a generator (see the module docstring).

    Resets ``manager`` on ``tasks`` (``group_size`` envs per task, or explicit ``group_ids``) when first advanced,
    then yields the requests of every turn and steps the envs with the ``(responses, extras)`` sent back, until no
    episode is running. ``on_turn`` is called with each step's new records. Returns the trajectories.
    Raises ``RuntimeError`` when a turn's responses answer none of the active envs (the loop could not advance).
    """
    stats = stats if stats is not None else LoopStats()
    t0 = time.perf_counter()
    manager.reset(tasks, group_ids=group_ids, group_size=group_size)
    stats.reset_s += time.perf_counter() - t0
    while manager.active:
        t0 = time.perf_counter()
        requests = manager.requests()
        stats.env_s += time.perf_counter() - t0
        responses, extras = yield requests
        if not responses:
            raise RuntimeError(f"the policy answered none of {len(requests)} active envs")
        t0 = time.perf_counter()
        records = manager.step(responses, extras)
        stats.env_s += time.perf_counter() - t0
        stats.turns += len(records)
        stats.calls += 1
        stats.generated_tokens += sum(len(r.extras.get("response_ids", ())) for r in records)
        if on_turn is not None:
            on_turn(records)
    return manager.trajectories()


def advance(loop: EpisodeLoop, sent: tuple[Responses, Extras | None] | None = None) -> list[TurnRequest] | None:
    """One step of ``loop`` (``next`` when ``sent`` is None, else ``send``); ``None`` once the loop has ended.

    Useful where ``StopIteration`` cannot travel (an executor future). The trajectories of an ended loop are the
    manager's ``trajectories()``.
    """
    try:
        return next(loop) if sent is None else loop.send(sent)
    except StopIteration:
        return None


def run_episodes(
    manager: EnvManager,
    policy: Policy,
    tasks: Sequence[TaskSpec],
    group_size: int = 1,
    group_ids: Sequence[int] | None = None,
    on_turn: Callable[[list[TurnRecord]], None] | None = None,
    stats: LoopStats | None = None,
) -> list[Trajectory]:
    """Run ``policy`` on ``tasks`` until every episode ends; returns one trajectory per env, in slot order.

    ``policy`` answers with ``act_with_extras`` when it has it (engine policies: token ids and log-probs go into
    the turn records), else ``act``. ``stats`` (optional) accumulates the phase timings, policy time included.
    """
    stats = stats if stats is not None else LoopStats()
    act_with_extras = getattr(policy, "act_with_extras", None)
    loop = episodes(manager, tasks, group_size=group_size, group_ids=group_ids, on_turn=on_turn, stats=stats)
    requests = next(loop)
    while True:
        t0 = time.perf_counter()
        if act_with_extras is not None:
            responses, extras = act_with_extras(requests)
        else:
            responses, extras = policy.act(requests), None
        stats.policy_s += time.perf_counter() - t0
        try:
            requests = loop.send((responses, extras))
        except StopIteration as end:
            return end.value


__all__ = ["EpisodeLoop", "Extras", "LoopStats", "Responses", "advance", "episodes", "run_episodes"]

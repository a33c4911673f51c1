"""Drive a batch of text envs through the Plan-Execute protocol and record every turn.

The manager owns the per-env protocol state the model does not see directly: the *current subgoal*
(spec §2.4: what the model wrote in ``<subgoal>`` last turn, after KEEP semantics), the short
history of ``(observation, action)`` pairs, and the list of :class:`TurnRecord` of each episode.
It renders one user prompt per *active* env, parses each response with the one parser
(:func:`hiper.protocol.parse_response`), steps the env with the parsed action and stops prompting an
env once its episode is done (spec §8.2 item 4: no wasted generation)::

    manager = EnvManager(batch, family="household")
    manager.reset(tasks, group_size=4)          # 4 envs per task, same task and seed (GRPO/GiGPO)
    while manager.active:
        requests = manager.requests()           # one TurnRequest per active env
        responses = {r.slot: policy_text(r.prompt) for r in requests}
        manager.step(responses, extras=None)    # extras: per-slot engine token ids / log-probs
    trajectories = manager.trajectories()

``batch`` is any object with the batch-env API of :mod:`hiper.envs.pool`: ``reset(tasks) ->
list[(obs, info)]`` (slot ``i`` runs ``tasks[i]``), ``step(actions: dict[slot, str]) -> dict[slot,
StepResult]`` and optionally ``expert(slots) -> dict[slot, ExpertStep]``. :class:`~hiper.envs.pool.LocalEnvBatch`
adapts plain :class:`~hiper.envs.base.TextEnv` instances in the current process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hiper.envs.base import ExpertStep, StepResult, TaskSpec, TextEnv
from hiper.envs.pool import LocalEnvBatch

#: ``renderer(family, *, task, observation, admissible, current_subgoal, history, step) -> str``
Renderer = Callable[..., str]


class BatchEnv(Protocol):
    """The batch-env API the manager needs (implemented by ``EnvPool``, ``LocalEnvBatch``, :class:`InProcessBatch`)."""

    def reset(self, tasks: Sequence[TaskSpec]) -> list[tuple[str, dict[str, Any]]]: ...

    def step(self, actions: Mapping[int, str]) -> dict[int, StepResult]: ...


# --------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------


def is_admissible(action: str, admissible: Sequence[str]) -> bool:
    """``action`` is in ``admissible`` or fills one of its templates (``verb[<placeholder>]`` admits ``verb[...]``)."""
    if action in admissible:
        return True
    for entry in admissible:
        head, sep, rest = entry.partition("[<")
        if sep and rest.endswith(">]") and action.startswith(head + "[") and action.endswith("]"):
            return len(action) > len(head) + 2
    return False


@dataclass
class TurnRecord:
    """One turn of one env: the prompt the policy saw, what it answered, and what the env did.

    ``observation`` is the env text the prompt was rendered from (the state *before* the action; its
    exact text is the GiGPO state key, see :attr:`state_key`). ``current_subgoal`` is the subgoal in
    force before the turn (``None`` at turn 0) and ``subgoal`` the one after KEEP semantics.
    ``reward``/``done``/``won``/``score``/``truncated`` describe the transition caused by ``action``.
    ``extras`` holds whatever the policy attached (engine ``prompt_ids``, ``response_ids``,
    ``logprobs`` ...); the trainer may add more.
    """

    task: TaskSpec
    turn: int
    prompt: str
    observation: str
    admissible: list[str]
    response: str
    parsed: Any  # hiper.protocol.ParsedResponse
    current_subgoal: str | None
    subgoal: str | None
    keep_inconsistent: bool
    action: str
    next_observation: str
    reward: float
    done: bool
    truncated: bool
    truncation_reason: str | None
    valid: bool
    won: bool
    score: float
    task_type: str
    slot: int = -1
    group: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def switch(self) -> Any:
        """The parsed switch decision (``hiper.protocol.Switch``)."""
        return self.parsed.switch

    @property
    def is_switch(self) -> bool:
        """True when the model wrote ``<switch>SWITCH</switch>`` (case-insensitive, per the parser)."""
        return getattr(self.parsed.switch, "name", str(self.parsed.switch)).upper() == "SWITCH"

    @property
    def is_boundary(self) -> bool:
        """Trainer-side segment boundary as decided by the parser (spec §2.5 b)."""
        return bool(self.parsed.is_boundary)

    @property
    def admissible_action(self) -> bool:
        """Whether the executed action matches the admissible list (well-formed != admissible).

        A template entry such as WebShop's ``search[<your query>]`` admits any ``search[...]``.
        """
        return is_admissible(self.action, self.admissible)

    @property
    def state_key(self) -> str:
        """GiGPO anchor-state id: the exact observation text the prompt was rendered from."""
        return self.observation


@dataclass
class Trajectory:
    """All turns of one episode of one env, plus its task and group (envs reset on the same task)."""

    task: TaskSpec
    slot: int
    group: int | None = None
    turns: list[TurnRecord] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Number of turns (== env steps) taken."""
        return len(self.turns)

    @property
    def finished(self) -> bool:
        """The episode is over (won, env terminal, or truncated)."""
        return bool(self.turns) and self.turns[-1].done

    @property
    def won(self) -> bool:
        """``info['won']`` at the last recorded step."""
        return bool(self.turns) and self.turns[-1].won

    @property
    def score(self) -> float:
        """``info['score']`` at the last recorded step (WebShop raw reward, 1.0/0.0 for binary tasks)."""
        return float(self.turns[-1].score) if self.turns else 0.0

    @property
    def total_reward(self) -> float:
        """Sum of env rewards over the episode (undiscounted)."""
        return float(sum(t.reward for t in self.turns))

    @property
    def truncated(self) -> bool:
        """The episode was cut (step limit, crashed worker) rather than finished."""
        return bool(self.turns) and self.turns[-1].truncated

    @property
    def truncation_reason(self) -> str | None:
        return self.turns[-1].truncation_reason if self.turns else None

    @property
    def task_type(self) -> str:
        return self.turns[-1].task_type if self.turns else ""

    @property
    def n_switches(self) -> int:
        """Turns whose response chose SWITCH."""
        return sum(t.is_switch for t in self.turns)

    @property
    def n_invalid(self) -> int:
        """Turns whose response was not well-formed (``valid`` False)."""
        return sum(not t.valid for t in self.turns)

    @property
    def n_keep_inconsistent(self) -> int:
        """KEEP turns whose subgoal text differed from the current subgoal."""
        return sum(t.keep_inconsistent for t in self.turns)

    @property
    def n_inadmissible(self) -> int:
        """Turns whose executed action was not in the admissible list."""
        return sum(not t.admissible_action for t in self.turns)

    @property
    def switch_rate(self) -> float:
        return self.n_switches / self.length if self.turns else 0.0

    @property
    def invalid_rate(self) -> float:
        return self.n_invalid / self.length if self.turns else 0.0


@dataclass(frozen=True)
class TurnRequest:
    """What a policy needs to answer one active env this turn."""

    slot: int
    prompt: str  # user-message text (not chat-templated)
    admissible: list[str]
    current_subgoal: str | None
    task: str  # task text
    task_spec: TaskSpec
    observation: str
    turn: int
    group: int | None = None


# --------------------------------------------------------------------------------------------------
# in-process batch adapter
# --------------------------------------------------------------------------------------------------


class InProcessBatch(LocalEnvBatch):
    """:class:`~hiper.envs.pool.LocalEnvBatch` that can pre-build ``n`` envs: ``InProcessBatch(factory, n)``.

    Slot ``i`` runs ``tasks[i]``; more tasks than envs grows the batch. An exception raised by an
    env's ``step`` ends that slot's episode truncated with ``truncation_reason="env error: ..."``.
    """

    def __init__(self, factory: Callable[[], TextEnv], n: int = 0) -> None:
        super().__init__(factory)
        self.envs = [factory() for _ in range(n)]


def make_batch(env: str, n_workers: int = 0, timeout_s: float = 120.0, **env_kwargs: Any) -> Any:
    """A batch env for registered env ``env``: a worker :class:`~hiper.envs.pool.EnvPool` when
    ``n_workers > 0``, otherwise an in-process :class:`~hiper.envs.pool.LocalEnvBatch`."""
    from hiper.envs import make_env

    factory = functools.partial(make_env, env, **env_kwargs)
    if n_workers > 0:
        from hiper.envs.pool import EnvPool

        return EnvPool(factory, n_workers=n_workers, timeout_s=timeout_s)
    return LocalEnvBatch(factory)


# --------------------------------------------------------------------------------------------------
# manager
# --------------------------------------------------------------------------------------------------


def grouped(tasks: Sequence[TaskSpec], n: int) -> tuple[list[TaskSpec], list[int]]:
    """Repeat each task ``n`` times consecutively: ``([t0]*n + [t1]*n + ..., [0]*n + [1]*n + ...)``."""
    if n < 1:
        raise ValueError(f"group size must be >= 1, got {n}")
    reps = [t for t in tasks for _ in range(n)]
    ids = [g for g in range(len(tasks)) for _ in range(n)]
    return reps, ids


@dataclass
class _Slot:
    task: TaskSpec
    group: int | None
    observation: str
    info: dict[str, Any]
    current_subgoal: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)
    active: bool = True
    prompt: str | None = None


class EnvManager:
    """Protocol state machine over a batch env (see the module docstring).

    Args:
        envs: the batch env (``reset``/``step``/``expert``, see :class:`BatchEnv`).
        family: prompt family for the renderer (``"household"`` or ``"webshop"``); defaults to
            ``envs.family`` when the batch has one.
        history_length: number of most recent ``(observation, action)`` pairs shown in the prompt.
        renderer: ``render_prompt``-compatible callable; default :func:`hiper.protocol.render_prompt`.
        strict_parse: passed to :func:`hiper.protocol.parse_response`.
        max_turns: optional manager-side turn cap; an env still running after it is marked
            ``done``/``truncated`` with ``truncation_reason="max_turns"`` (envs cap themselves too).
    """

    def __init__(
        self,
        envs: Any,
        family: str | None = None,
        history_length: int = 2,
        renderer: Renderer | None = None,
        strict_parse: bool = False,
        max_turns: int | None = None,
    ) -> None:
        from hiper import protocol

        self.envs = envs
        self.family = family or getattr(envs, "family", None)
        if self.family is None:
            raise ValueError("EnvManager needs a prompt family ('household' or 'webshop')")
        if history_length < 0:
            raise ValueError(f"history_length must be >= 0, got {history_length}")
        if max_turns is not None and max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.history_length = history_length
        if renderer is None:
            # the default renderer trims the history itself: make it show exactly ``history_length`` pairs
            config = protocol.PromptConfig(history_length=history_length)
            renderer = functools.partial(protocol.render_prompt, config=config)
        self.renderer: Renderer = renderer
        self.strict_parse = strict_parse
        self.max_turns = max_turns
        self._parse = protocol.parse_response
        self._next_subgoal = protocol.next_subgoal
        self._slots: list[_Slot] = []

    # -- episode control ------------------------------------------------------------------------

    def reset(
        self,
        tasks: Sequence[TaskSpec],
        group_ids: Sequence[int] | None = None,
        group_size: int = 1,
    ) -> list[TurnRequest]:
        """Start one episode per task (``group_size`` envs per task when > 1) and return the first requests.

        With ``group_size=n`` the tasks are repeated ``n`` times consecutively and trajectory ``i``
        gets ``group = i // n``; explicit ``group_ids`` (one per task after repetition) override that.
        """
        tasks = list(tasks)
        if not tasks:
            raise ValueError("reset needs at least one task")
        if group_size > 1:
            if group_ids is not None:
                raise ValueError("pass either group_ids or group_size, not both")
            tasks, group_ids = grouped(tasks, group_size)
        if group_ids is not None and len(group_ids) != len(tasks):
            raise ValueError(f"{len(group_ids)} group ids for {len(tasks)} tasks")
        results = self.envs.reset(tasks)
        if len(results) != len(tasks):
            raise RuntimeError(f"batch env returned {len(results)} resets for {len(tasks)} tasks")
        self._slots = [
            _Slot(
                task=task,
                group=None if group_ids is None else int(group_ids[i]),
                observation=obs,
                info=dict(info),
            )
            for i, (task, (obs, info)) in enumerate(zip(tasks, results))
        ]
        return self.requests()

    @property
    def active(self) -> bool:
        """True while at least one env's episode is still running."""
        return any(s.active for s in self._slots)

    @property
    def active_slots(self) -> list[int]:
        return [i for i, s in enumerate(self._slots) if s.active]

    def __len__(self) -> int:
        return len(self._slots)

    def requests(self) -> list[TurnRequest]:
        """One :class:`TurnRequest` per active env (finished envs are not prompted)."""
        out = []
        for slot in self.active_slots:
            s = self._slots[slot]
            if s.prompt is None:
                s.prompt = self._render(s)
            out.append(
                TurnRequest(
                    slot=slot,
                    prompt=s.prompt,
                    admissible=list(s.info.get("admissible", [])),
                    current_subgoal=s.current_subgoal,
                    task=str(s.info.get("task", "")),
                    task_spec=s.task,
                    observation=s.observation,
                    turn=len(s.turns),
                    group=s.group,
                )
            )
        return out

    def _render(self, s: _Slot) -> str:
        history = s.history[-self.history_length :] if self.history_length else []
        return self.renderer(
            self.family,
            task=str(s.info.get("task", "")),
            observation=s.observation,
            admissible=list(s.info.get("admissible", [])),
            current_subgoal=s.current_subgoal,
            history=history,
            step=len(s.turns),
        )

    def step(
        self, responses: Mapping[int, str], extras: Mapping[int, Mapping[str, Any]] | None = None
    ) -> list[TurnRecord]:
        """Apply one response per given active slot; returns the new :class:`TurnRecord` s.

        Each response is parsed, KEEP semantics give the new current subgoal, and the parsed action
        (the parser's fallback string for a malformed response; a well-formed but inadmissible
        action as written) is sent to the env. Slots not in ``responses`` do not advance.
        """
        extras = extras or {}
        for slot in responses:
            if not 0 <= slot < len(self._slots):
                raise KeyError(f"unknown slot {slot}; the batch has {len(self._slots)} envs")
            if not self._slots[slot].active:
                raise ValueError(f"slot {slot} is finished; only active slots can be stepped")
        if not responses:
            return []
        parsed = {slot: self._parse(text, strict=self.strict_parse) for slot, text in responses.items()}
        actions = {slot: p.action for slot, p in parsed.items()}
        results = self.envs.step(actions)
        missing = set(actions) - set(results)
        if missing:
            raise RuntimeError(f"batch env returned no step result for slots {sorted(missing)}")
        records = []
        for slot, text in responses.items():
            s = self._slots[slot]
            p, res = parsed[slot], results[slot]
            subgoal, keep_inconsistent = self._next_subgoal(s.current_subgoal, p)
            info = dict(res.info)
            done, truncated = bool(res.done), bool(info.get("truncated", False))
            reason = info.get("truncation_reason")
            if not done and self.max_turns is not None and len(s.turns) + 1 >= self.max_turns:
                done, truncated, reason = True, True, "max_turns"
            rec = TurnRecord(
                task=s.task,
                turn=len(s.turns),
                prompt=s.prompt if s.prompt is not None else self._render(s),
                observation=s.observation,
                admissible=list(s.info.get("admissible", [])),
                response=text,
                parsed=p,
                current_subgoal=s.current_subgoal,
                subgoal=subgoal,
                keep_inconsistent=bool(keep_inconsistent),
                action=actions[slot],
                next_observation=res.obs,
                reward=float(res.reward),
                done=done,
                truncated=truncated,
                truncation_reason=reason if truncated else None,
                valid=bool(p.valid),
                won=bool(info.get("won", False)),
                score=float(info.get("score", 0.0)),
                task_type=str(info.get("task_type", s.info.get("task_type", ""))),
                slot=slot,
                group=s.group,
                extras=dict(extras.get(slot, {})),
            )
            s.turns.append(rec)
            s.history.append((s.observation, rec.action))
            s.current_subgoal = subgoal
            s.observation = res.obs
            # keep the task/task_type known from reset if a crashed worker returned a bare info
            s.info = {**s.info, **info}
            s.prompt = None
            s.active = not done
            records.append(rec)
        return records

    # -- experts and results --------------------------------------------------------------------

    def expert(self, slots: Iterable[int] | None = None) -> dict[int, ExpertStep]:
        """The batch's expert step for each given (default: every active) slot."""
        slots = self.active_slots if slots is None else list(slots)
        if not hasattr(self.envs, "expert"):
            raise TypeError(f"{type(self.envs).__name__} has no expert(slots)")
        return self.envs.expert(slots)

    def trajectories(self) -> list[Trajectory]:
        """One :class:`Trajectory` per slot, in slot order (finished or not)."""
        return [
            Trajectory(task=s.task, slot=i, group=s.group, turns=list(s.turns))
            for i, s in enumerate(self._slots)
        ]

    def close(self) -> None:
        close = getattr(self.envs, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------------------------------
# episode loop and stats
# --------------------------------------------------------------------------------------------------


def run_episodes(
    manager: EnvManager,
    policy: Any,
    tasks: Sequence[TaskSpec],
    group_size: int = 1,
    group_ids: Sequence[int] | None = None,
    on_turn: Callable[[list[TurnRecord]], None] | None = None,
) -> list[Trajectory]:
    """Reset ``manager`` on ``tasks`` and run ``policy`` until every episode ends.

    ``policy`` has ``act(requests) -> dict[slot, str]``; if it also has ``act_with_extras`` (engine
    policies) that is used and its extras (token ids, log-probs) go into the turn records.
    ``on_turn`` is called with the new records after every batch step (progress bars, logging).
    """
    manager.reset(tasks, group_ids=group_ids, group_size=group_size)
    act_with_extras = getattr(policy, "act_with_extras", None)
    while manager.active:
        requests = manager.requests()
        if act_with_extras is not None:
            responses, extras = act_with_extras(requests)
        else:
            responses, extras = policy.act(requests), None
        if not responses:
            raise RuntimeError(f"{type(policy).__name__} answered none of {len(requests)} active envs")
        records = manager.step(responses, extras)
        if on_turn is not None:
            on_turn(records)
    return manager.trajectories()


def episode_stats(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """Summary numbers of finished episodes: success, score, length, format and switch rates.

    Rates over turns (``invalid_rate``, ``switch_rate``, ``keep_inconsistent_rate``,
    ``inadmissible_rate``) are pooled over all turns of all episodes; ``success``/``score``/``length``
    are means over episodes. ``per_type`` has ``n``, ``success`` and ``score`` per task type.
    """
    n = len(trajectories)
    turns = sum(t.length for t in trajectories)

    def rate(count: int) -> float:
        return count / turns if turns else 0.0

    per_type: dict[str, dict[str, float]] = {}
    for tr in trajectories:
        d = per_type.setdefault(tr.task_type or "?", {"n": 0, "success": 0.0, "score": 0.0})
        d["n"] += 1
        d["success"] += tr.won
        d["score"] += tr.score
    for d in per_type.values():
        d["success"] /= d["n"]
        d["score"] /= d["n"]
    return {
        "n_episodes": n,
        "n_turns": turns,
        "success": sum(t.won for t in trajectories) / n if n else 0.0,
        "score": sum(t.score for t in trajectories) / n if n else 0.0,
        "length": turns / n if n else 0.0,
        "truncated": sum(t.truncated for t in trajectories) / n if n else 0.0,
        "invalid_rate": rate(sum(t.n_invalid for t in trajectories)),
        "switch_rate": rate(sum(t.n_switches for t in trajectories)),
        "keep_inconsistent_rate": rate(sum(t.n_keep_inconsistent for t in trajectories)),
        "inadmissible_rate": rate(sum(t.n_inadmissible for t in trajectories)),
        "per_type": dict(sorted(per_type.items())),
    }


__all__ = [
    "BatchEnv",
    "EnvManager",
    "InProcessBatch",
    "Trajectory",
    "TurnRecord",
    "TurnRequest",
    "episode_stats",
    "grouped",
    "is_admissible",
    "make_batch",
    "run_episodes",
]

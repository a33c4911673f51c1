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

That loop is written once, in :mod:`hiper.rollout.loop`; everything else (training, eval, play, benchmarks, the
verl agent loop) drives the manager through it.

``batch`` is any object with the batch-env API of :mod:`hiper.envs.pool`: ``reset(tasks) ->
list[(obs, info)]`` (slot ``i`` runs ``tasks[i]``), ``step(actions: dict[slot, str]) -> dict[slot,
StepResult]`` and optionally ``expert(slots) -> dict[slot, ExpertStep]``. :class:`~hiper.envs.pool.LocalEnvBatch`
adapts plain :class:`~hiper.envs.base.TextEnv` instances in the current process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hiper.envs.base import ExpertStep, TaskSpec
from hiper.envs.pool import BatchEnv
from hiper.protocol.flat import parser_for
from hiper.protocol.grammar import next_subgoal
from hiper.protocol.prompts import PromptConfig, render_flat_prompt, render_prompt
from hiper.rollout.records import Trajectory, TurnRecord, TurnRequest

#: ``renderer(family, *, task, observation, admissible, current_subgoal, history, step) -> str``
Renderer = Callable[..., str]


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
    history_dropped: int = 0  # history pairs left out of ``prompt`` to fit the prompt budget


class EnvManager:
    """Protocol state machine over a batch env (see the module docstring).

    Args:
        envs: the batch env (``reset``/``step``/``expert``, see :class:`BatchEnv`).
        family: prompt family for the renderer (``"household"`` or ``"webshop"``); defaults to
            ``envs.family`` when the batch has one.
        history_length: number of most recent ``(observation, action)`` pairs shown in the prompt.
        renderer: ``render_prompt``-compatible callable; default :func:`hiper.render_prompt`.
        strict_parse: passed to the protocol's parser.
        protocol: the answer protocol: ``plan_execute`` (:func:`hiper.protocol.parse_response`) or ``flat``
            (:func:`hiper.protocol.parse_flat`, with a flat renderer such as :func:`hiper.render_flat_prompt`).
        switch_hint: the default renderer's first-turn "answer SWITCH" hint (:class:`PromptConfig`).
        max_turns: optional manager-side turn cap; an env still running after it is marked
            ``done``/``truncated`` with ``truncation_reason="max_turns"`` (envs cap themselves too).
        prompt_fits: optional budget check ``(prompt text) -> bool`` (e.g. the chat-templated token count
            against ``rollout.max_prompt_length``). A prompt that does not fit is rendered again with the
            oldest history pair left out, until it fits or no history is left; the turn records how many pairs
            were dropped (``TurnRecord.history_dropped``).
    """

    def __init__(
        self,
        envs: BatchEnv,
        family: str | None = None,
        history_length: int = 2,
        renderer: Renderer | None = None,
        strict_parse: bool = False,
        max_turns: int | None = None,
        switch_hint: bool = True,
        protocol: str = "plan_execute",
        prompt_fits: Callable[[str], bool] | None = None,
    ) -> None:
        self.envs = envs
        self.protocol = protocol
        self._parse = parser_for(protocol)
        self.prompt_fits = prompt_fits
        self.family = family or getattr(envs, "family", None)
        if self.family is None:
            raise ValueError("EnvManager needs a prompt family ('household' or 'webshop')")
        if history_length < 0:
            raise ValueError(f"history_length must be >= 0, got {history_length}")
        if max_turns is not None and max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.history_length = history_length
        if renderer is None or renderer is render_prompt or renderer is render_flat_prompt:
            # these renderers trim the history themselves: make them show exactly ``history_length`` pairs
            config = PromptConfig(history_length=history_length, switch_hint=switch_hint)
            renderer = functools.partial(renderer or render_prompt, config=config)
        self.renderer: Renderer = renderer
        self.strict_parse = strict_parse
        self.max_turns = max_turns
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
                s.prompt, s.history_dropped = self._fitted_prompt(s)
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

    def _fitted_prompt(self, s: _Slot) -> tuple[str, int]:
        """The slot's prompt, and how many of its history pairs were dropped to fit ``prompt_fits``."""
        history = s.history[-self.history_length :] if self.history_length else []
        text = self._render(s, history)
        dropped = 0
        while self.prompt_fits is not None and history and not self.prompt_fits(text):
            history = history[1:]  # the oldest pair first, as a sliding window would
            dropped += 1
            text = self._render(s, history)
        return text, dropped

    def _render(self, s: _Slot, history: list[tuple[str, str]]) -> str:
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
        parsed = {slot: self._parse(text, self.strict_parse) for slot, text in responses.items()}
        actions = {slot: p.action for slot, p in parsed.items()}
        results = self.envs.step(actions)
        missing = set(actions) - set(results)
        if missing:
            raise RuntimeError(f"batch env returned no step result for slots {sorted(missing)}")
        records = []
        for slot, text in responses.items():
            s = self._slots[slot]
            p, res = parsed[slot], results[slot]
            subgoal, keep_inconsistent = next_subgoal(s.current_subgoal, p)
            info = dict(res.info)
            done, truncated = bool(res.done), bool(info.get("truncated", False))
            reason = info.get("truncation_reason")
            if not done and self.max_turns is not None and len(s.turns) + 1 >= self.max_turns:
                done, truncated, reason = True, True, "max_turns"
            if s.prompt is None:  # stepped without a request (a scripted caller): render it now
                s.prompt, s.history_dropped = self._fitted_prompt(s)
            rec = TurnRecord(
                task=s.task,
                turn=len(s.turns),
                prompt=s.prompt,
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
                history_dropped=s.history_dropped,
            )
            s.turns.append(rec)
            s.history.append((s.observation, rec.action))
            s.current_subgoal = subgoal
            s.observation = res.obs
            # keep the task/task_type known from reset if a crashed worker returned a bare info
            s.info = {**s.info, **info}
            s.prompt, s.history_dropped = None, 0
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


__all__ = ["EnvManager", "Renderer", "grouped"]

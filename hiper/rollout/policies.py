"""Policies that answer :class:`~hiper.rollout.records.TurnRequest` s with protocol responses.

A policy has ``act(requests) -> dict[slot, response_text]``. Policies that produce token-level data
(engine policies) also have ``act_with_extras(requests) -> (responses, extras)`` where
``extras[slot]`` holds ``prompt_ids``, ``response_ids``, ``logprobs`` and ``finish_reason``;
:func:`hiper.rollout.loop.run_episodes` prefers it and stores the extras in the turn records.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from hiper.protocol.flat import format_flat
from hiper.protocol.grammar import Switch, format_response
from hiper.protocol.prompts import chat_prompt
from hiper.rollout.engine import GenerationEngine, derive_seed
from hiper.rollout.records import TurnRequest


@runtime_checkable
class Policy(Protocol):
    def act(self, requests: Sequence[TurnRequest]) -> dict[int, str]: ...


class BasePolicy:
    """Default ``act_with_extras``: the texts of :meth:`act` and no extras."""

    def act(self, requests: Sequence[TurnRequest]) -> dict[int, str]:
        raise NotImplementedError

    def act_with_extras(
        self, requests: Sequence[TurnRequest]
    ) -> tuple[dict[int, str], dict[int, dict[str, Any]]]:
        return self.act(requests), {}


def write_response(switch: Any, subgoal: str, action: str) -> str:
    """:func:`hiper.protocol.format_response`, or the same three blocks written verbatim when it refuses.

    ``format_response`` rejects content the parser would flag (CJK text, e.g. a WebShop oracle query
    copied from a product title). A scripted policy must still act, so the blocks are written as is
    and the parser records the turn as invalid (``errors`` says why) while the env gets the action.
    """
    try:
        return format_response(switch, subgoal, action)
    except ValueError:
        value = getattr(switch, "value", str(switch))
        return f"<switch>{value}</switch>\n<subgoal>{subgoal.strip()}</subgoal>\n<action>{action.strip()}</action>"


def _write_flat(think: str, action: str) -> str:
    """:func:`hiper.protocol.format_flat`, or the two blocks verbatim when it refuses (as :func:`write_response`)."""
    try:
        return format_flat(think, action)
    except ValueError:
        return f"<think>{think.strip()}</think>\n<action>{action.strip()}</action>"


class ExpertPolicy(BasePolicy):
    """Follows the env's expert/oracle and writes well-formed protocol responses.

    ``source`` is an :class:`~hiper.rollout.manager.EnvManager` or a batch env with ``expert(slots)``.
    The response is ``SWITCH`` when the expert's subgoal differs from the current subgoal (always at
    turn 0, where there is none) and ``KEEP`` otherwise, so the expert's KEEPs are always consistent.
    Under the flat protocol (``source.protocol == "flat"``) it writes ``<think>{subgoal}</think>`` and the
    action: the expert's subgoal is its reasoning.

    ``noise`` > 0 perturbs the expert as DART does (Laskey et al. 2017, "DART: Noise Injection for Robust
    Imitation Learning"): on each turn after the first, with probability ``noise``, the action is replaced by the
    slot's previous action (what a weak policy's loops look like: often inadmissible, "Nothing happens.") or, half
    the time, a random admissible one (a detour). The env executes it and the expert continues from the state it
    left, so the turns after it show a recovery that a noise-free expert never visits. Perturbed turns carry
    ``extras["perturbed"] = True`` so that behaviour cloning can leave them out. This needs an expert that plans
    from the current state (the household world's does). Seeded: the same requests in the same order give the
    same perturbations.
    """

    def __init__(self, source: Any, noise: float = 0.0, seed: int = 0) -> None:
        if not hasattr(source, "expert"):
            raise TypeError(f"{type(source).__name__} has no expert(slots)")
        if not 0.0 <= noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {noise}")
        self.source = source
        self.noise = noise
        self.rng = random.Random(seed)
        self._last_action: dict[int, str] = {}

    def act(self, requests: Sequence[TurnRequest]) -> dict[int, str]:
        return self.act_with_extras(requests)[0]

    def act_with_extras(
        self, requests: Sequence[TurnRequest]
    ) -> tuple[dict[int, str], dict[int, dict[str, Any]]]:
        switch = Switch
        steps = self.source.expert([r.slot for r in requests])
        out: dict[int, str] = {}
        extras: dict[int, dict[str, Any]] = {}
        flat = getattr(self.source, "protocol", "plan_execute") == "flat"
        for r in requests:
            step = steps[r.slot]
            action = step.action
            if self.noise > 0.0 and r.turn > 0 and self.rng.random() < self.noise:
                previous = self._last_action.get(r.slot)
                if previous is not None and (not r.admissible or self.rng.random() < 0.5):
                    action = previous
                elif r.admissible:
                    action = self.rng.choice(r.admissible)
                extras[r.slot] = {"perturbed": True}
            self._last_action[r.slot] = action
            if flat:
                out[r.slot] = _write_flat(step.subgoal, action)
                continue
            keep = r.turn > 0 and r.current_subgoal is not None and step.subgoal == r.current_subgoal
            out[r.slot] = write_response(switch.KEEP if keep else switch.SWITCH, step.subgoal, action)
        return out, extras


class RandomPolicy(BasePolicy):
    """Uniformly random admissible action in a well-formed response (a floor for success rates).

    A template action such as WebShop's ``search[<your query>]`` is filled with the task text.

    At turn 0 (no current subgoal) it SWITCHes; afterwards it SWITCHes with probability
    ``switch_prob`` to the subgoal ``"do: <action>"`` and otherwise KEEPs the current subgoal verbatim.
    Seeded, so the same requests in the same order give the same answers.
    """

    def __init__(self, seed: int = 0, switch_prob: float = 0.2) -> None:
        if not 0.0 <= switch_prob <= 1.0:
            raise ValueError(f"switch_prob must be in [0, 1], got {switch_prob}")
        self.rng = random.Random(seed)
        self.switch_prob = switch_prob

    def act(self, requests: Sequence[TurnRequest]) -> dict[int, str]:
        switch = Switch
        out = {}
        for r in requests:
            action = self.rng.choice(r.admissible) if r.admissible else "look"
            head, sep, rest = action.partition("[<")
            if sep and rest.endswith(">]"):  # a template such as search[<your query>]: use the task text
                action = f"{head}[{r.task.strip() or 'item'}]"
            if r.current_subgoal is None or self.rng.random() < self.switch_prob:
                out[r.slot] = write_response(switch.SWITCH, f"do: {action}", action)
            else:
                out[r.slot] = write_response(switch.KEEP, r.current_subgoal, action)
        return out


class EnginePolicy(BasePolicy):
    """An LLM behind a :class:`~hiper.rollout.engine.GenerationEngine`.

    Each request's user prompt is wrapped with the tokenizer's chat template
    (:func:`hiper.protocol.chat_prompt`, a fresh single-user-message prompt per turn, spec §2.2) and
    all active envs are generated in one batch. ``extras[slot]`` gets ``prompt_ids``,
    ``response_ids``, ``logprobs`` (see :class:`~hiper.rollout.engine.GenerationOutput`) and
    ``finish_reason``. With ``seed`` set, call ``k`` of this policy samples with the seed
    ``derive_seed(seed, k)``, so a rollout is a pure function of (weights, tasks, seed).
    """

    def __init__(
        self,
        engine: GenerationEngine,
        tokenizer: Any,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 128,
        stop: Sequence[str] = ("</action>",),
        chat: bool = True,
        seed: int | None = None,
    ) -> None:
        self.engine = engine
        self.seed = seed
        self.calls = 0
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.stop = tuple(stop)
        self.chat = chat

    def prompts(self, requests: Sequence[TurnRequest]) -> list[str]:
        """The chat-formatted prompt text of each request."""
        if not self.chat:
            return [r.prompt for r in requests]
        return [chat_prompt(self.tokenizer, r.prompt) for r in requests]

    def act_with_extras(
        self, requests: Sequence[TurnRequest]
    ) -> tuple[dict[int, str], dict[int, dict[str, Any]]]:
        if not requests:
            return {}, {}
        seed = {} if self.seed is None else {"seed": derive_seed(self.seed, self.calls)}
        self.calls += 1
        outputs = self.engine.generate(
            self.prompts(requests),
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            stop=self.stop,
            **seed,
        )
        responses, extras = {}, {}
        for r, o in zip(requests, outputs):
            responses[r.slot] = o.text
            extras[r.slot] = {
                "prompt_ids": o.prompt_ids,
                "response_ids": o.response_ids,
                "logprobs": o.logprobs,
                "finish_reason": o.finish_reason,
            }
        return responses, extras

    def act(self, requests: Sequence[TurnRequest]) -> dict[int, str]:
        return self.act_with_extras(requests)[0]


__all__ = ["BasePolicy", "EnginePolicy", "ExpertPolicy", "Policy", "RandomPolicy", "write_response"]

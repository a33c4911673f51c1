"""Test doubles shared by the test files: a scripted stand-in for ``vllm.LLM`` and its ``SamplingParams``.

They live here, not in the library: a fake model is test code (``hiper bench rollout`` measures a real vLLM).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class _Logprob:
    logprob: float


@dataclass
class _Completion:
    token_ids: list[int]
    logprobs: list[dict[int, _Logprob]] | None
    finish_reason: str
    stop_reason: str | int | None
    text: str


@dataclass
class _RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[_Completion]


class ScriptedSamplingParams:
    """Stand-in for ``vllm.SamplingParams``: keeps the keyword arguments as attributes and, like vLLM,
    refuses names it does not know."""

    FIELDS = frozenset({
        "n", "temperature", "top_p", "top_k", "max_tokens", "stop", "stop_token_ids", "include_stop_str_in_output",
        "logprobs", "skip_special_tokens", "detokenize", "seed",
    })  # fmt: skip

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - self.FIELDS
        if unknown:
            raise TypeError(f"SamplingParams got unexpected arguments {sorted(unknown)}")
        self.seed: int | None = None
        self.stop: list[str] = []
        self.stop_token_ids: list[int] = []
        self.__dict__.update(kwargs)

    def as_dict(self) -> dict[str, Any]:
        return dict(sorted(self.__dict__.items()))


class ScriptedLLM:
    """Stand-in for ``vllm.LLM`` with vLLM's output semantics and no model (``--dry-run``, CPU tests).

    Each prompt gets one of a few canned protocol responses (some with text after ``</action>``, one that
    rambles past any cap, one cut before ``</action>`` by the first ``stop_token_ids`` entry), chosen from a hash of the
    prompt ids (greedy) or of ``(seed, prompt ids)`` (sampling). The response is tokenized and cut the way
    vLLM cuts it: at ``max_tokens`` (``finish_reason="length"``), after the token completing a stop string
    (kept, ``stop_reason`` = the string), or at a ``stop_token_ids`` id (kept, ``stop_reason`` = the id).
    Every call is recorded in ``calls`` as ``(prompt ids, SamplingParams list)``.
    """

    ACTIONS = ("look", "inventory", "go to countertop 1", "open fridge 1", "examine drawer 2", "take mug 1")

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.calls: list[tuple[list[list[int]], list[Any]]] = []
        self.prefix_cache_resets = 0

    def reset_prefix_cache(self) -> bool:
        self.prefix_cache_resets += 1
        return True

    def _script(self, prompt: Sequence[int], sp: Any) -> tuple[list[int], bool]:
        key = hashlib.sha1(json.dumps(list(prompt)).encode()).hexdigest()
        rng = random.Random(key if not sp.temperature else f"{sp.seed}-{key}")
        action = rng.choice(self.ACTIONS)
        kind = rng.choice(("tail", "tail", "clean", "ramble", "eos"))
        body = f"<switch>SWITCH</switch>\n<subgoal>handle {action.split()[-1]}</subgoal>\n"
        if kind == "ramble":
            text = body + " ".join(["thinking about the room"] * 80)
        elif kind == "eos":  # ends before writing </action>, so the EOS id is what stops it
            text = body + f"<action>{action}"
        else:
            text = body + f"<action>{action}</action>" + ("\nand then some words" if kind == "tail" else "")
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        add_eos = kind == "eos" and bool(sp.stop_token_ids)
        return (ids + [int(sp.stop_token_ids[0])] if add_eos else ids), add_eos

    def _cut(self, ids: list[int], sp: Any) -> tuple[list[int], str, str | int | None]:
        cap = int(sp.max_tokens)
        stops = [int(t) for t in sp.stop_token_ids]
        hit_tok = next((i for i, t in enumerate(ids[:cap]) if t in stops), None)
        decode = lambda k: self.tokenizer.decode(ids[:k], skip_special_tokens=True)  # noqa: E731
        limit = cap if hit_tok is None else hit_tok + 1
        found = [s for s in sp.stop if s in decode(limit)]
        if found:  # smallest prefix whose text holds a stop string (monotone in k: binary search)
            lo, hi = 1, limit
            while lo < hi:
                mid = (lo + hi) // 2
                if any(s in decode(mid) for s in found):
                    hi = mid
                else:
                    lo = mid + 1
            text = decode(lo)
            return ids[:lo], "stop", next(s for s in found if s in text)
        if hit_tok is not None:
            return ids[: hit_tok + 1], "stop", ids[hit_tok]
        return ids[:cap], "length", None

    def generate(
        self, prompts: Sequence[Any], sampling_params: Any = None, use_tqdm: bool = True
    ) -> list[Any]:
        if sampling_params is None:
            raise ValueError("ScriptedLLM needs sampling_params")
        params = (
            list(sampling_params)
            if isinstance(sampling_params, list | tuple)
            else [sampling_params] * len(prompts)
        )
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        ids_list = [list(map(int, p["prompt_token_ids"])) for p in prompts]
        self.calls.append((ids_list, params))
        outs = []
        for prompt, sp in zip(ids_list, params):
            script, _ = self._script(prompt, sp)
            toks, finish, reason = self._cut(script, sp)
            lps = [{t: _Logprob(-1.0)} for t in toks] if sp.logprobs is not None else None
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            outs.append(_RequestOutput(prompt, [_Completion(toks, lps, finish, reason, text)]))
        return outs

"""The generation-engine interface the rollout loop talks to.

An engine turns a batch of prompts (chat-formatted text, or token ids) into one
:class:`GenerationOutput` per prompt, in order. The loop (``hiper.rollout.policies.EnginePolicy`` +
``hiper.rollout.manager``) only uses this interface, so a vLLM (or any server) engine can replace
:class:`~hiper.rollout.hf.HFEngine` without touching it.

Log-probability convention (what PPO's ``old_log_probs`` need): ``GenerationOutput.logprobs[i]`` is
``log_softmax(logits)[response_ids[i]]`` of the model's *raw* logits, i.e. at temperature 1 and
without top-p truncation, the same number a teacher-forced forward pass of the same weights on
``prompt_ids + response_ids`` gives. With ``temperature == 1`` and ``top_p == 1`` this is exactly the
behaviour policy's log-prob. Otherwise the tokens were drawn from the tempered / truncated
distribution and ``sampling_logprobs`` holds that distribution's log-prob of each token
(``0.0`` for greedy decoding, where the sampling distribution is a point mass); importance ratios
against the sampling distribution must use those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "eos", "length"]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived deterministically from integers (splitmix-style mixing).

    Every random choice of a run is drawn from a generator seeded by ``derive_seed(run_seed, stage, k)``, never
    from a hidden global stream, so a run resumed at iteration ``k`` continues bit for bit.
    """
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x ^= (int(p) + 0x9E3779B97F4A7C15 + ((x << 6) & 0xFFFFFFFFFFFFFFFF) + (x >> 2)) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


@dataclass
class GenerationOutput:
    """One generated response.

    ``prompt_ids``: the prompt's token ids (no padding). ``response_ids``: the generated token ids,
    ending with the token that completed a stop string (``finish_reason="stop"``; that token is kept
    whole, so ``text`` can run past the stop string by the rest of that token's characters, never by
    another token), with the EOS token (``"eos"``), or after ``max_new_tokens`` (``"length"``).
    ``logprobs``: one float per response token, natural log, raw model distribution (see the module
    docstring); ``sampling_logprobs``: same length, under the distribution actually sampled from.
    ``text``: ``response_ids`` decoded with special tokens skipped (what the env manager parses).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: FinishReason
    sampling_logprobs: list[float] = field(default_factory=list)


@runtime_checkable
class GenerationEngine(Protocol):
    """Batched text generation with per-token log-probs.

    ``generate`` returns outputs in prompt order. ``seed`` (optional) makes sampling reproducible for
    a given engine, batch and weights. ``update_weights`` loads new policy weights (a state dict or a
    module with ``state_dict()``) into engines that keep their own copy (vLLM); ``sync`` is called by
    the trainer after each optimizer step and is a no-op for engines that share the training model.
    """

    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 128,
        stop: Sequence[str] = ("</action>",),
        seed: int | None = None,
    ) -> list[GenerationOutput]: ...

    def update_weights(self, weights: Any) -> None: ...

    def sync(self) -> None: ...


def check_sampling_args(temperature: float, top_p: float, max_new_tokens: int) -> None:
    """Raise ``ValueError`` for sampling arguments no engine accepts."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def encode_prompts(tokenizer: Any, prompts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
    """Token ids of each prompt: text is encoded without special tokens (chat templates carry them),
    id sequences are copied as ints. An empty prompt is a ``ValueError``."""
    if not prompts:
        return []
    if isinstance(prompts[0], str):
        ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    else:
        ids = [list(map(int, p)) for p in prompts]
    for i, p in enumerate(ids):
        if not p:
            raise ValueError(f"prompt {i} is empty")
    return [list(p) for p in ids]


__all__ = ["FinishReason", "GenerationEngine", "GenerationOutput", "check_sampling_args", "derive_seed", "encode_prompts"]

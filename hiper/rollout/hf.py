"""``HFEngine``: batched generation with a transformers causal LM and exact per-token log-probs.

Decoding is written out (not ``model.generate``) so that every number it returns is known exactly:

* prompts are left-padded into one batch (attention mask + explicit position ids), prefilled once
  with ``logits_to_keep=1``, then decoded one token per step with a KV cache;
* each step takes ``log_softmax`` of the raw logits (float32) for ``logprobs`` and samples from the
  tempered, top-p-truncated distribution (``sampling_logprobs``), or takes the argmax when
  ``temperature == 0``; see :mod:`hiper.rollout.engine` for the log-prob convention;
* a row stops at EOS (the EOS token is kept in ``response_ids``) or when a stop string appears in
  the decoded tail (the completing token is kept, nothing after it), or after ``max_new_tokens``;
* stopped rows stop growing: the next token of a stopped row is a masked pad, and once a quarter of
  the rows in the batch have stopped the KV cache is compacted to the running rows; the loop ends
  as soon as every row has stopped;
* a plain Qwen2 model runs through :class:`~hiper.rollout.lean_qwen2.LeanQwen2` (the same equations with a
  fraction of transformers' per-call overhead; ``lean=False`` or any other model uses transformers' forward).

Only rows whose new token could complete a stop string (its text contains the stop string's last
character, looked up in a per-vocabulary table) are decoded in Python, so the per-step Python work
is proportional to the number of candidate rows, not to the batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from hiper.rollout import lean_qwen2
from hiper.rollout.engine import FinishReason, GenerationOutput, check_sampling_args, encode_prompts

#: compact the KV cache when at least this fraction of its rows have stopped.
_COMPACT_FRACTION = 0.25


def cache_keyword(model: Any) -> str:
    """The keyword a model's ``forward`` takes its KV cache under: ``cache`` (transformers >= 5.25, which warns on
    the old name) or ``past_key_values``. peft wrappers hide the base forward's keywords but pass them through."""
    fwd = model.get_base_model().forward if hasattr(model, "get_base_model") else model.forward
    return "cache" if "cache" in inspect.signature(fwd).parameters else "past_key_values"


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for source in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else list(source))
    return sorted(ids)


class HFEngine:
    """:class:`~hiper.rollout.engine.GenerationEngine` over a transformers ``model`` (shares its weights).

    Args:
        model: a causal LM (``model(input_ids, attention_mask, position_ids, past_key_values,
            use_cache)`` returning ``.logits`` ``[batch, seq, vocab]`` and ``.past_key_values``).
        tokenizer: its tokenizer (used to encode text prompts and decode responses).
        device: where to run; default the model's device. The model is not moved.
        max_batch_size: prompts per forward batch; longer lists are generated in chunks of similar
            prompt length.
        seed: seed of the engine's ``torch.Generator`` (sampling is reproducible for the same seed,
            weights and sequence of calls).
        eos_token_ids: ids that end a response; default the tokenizer's and generation config's EOS.
        lean: decode a plain Qwen2 model with :class:`~hiper.rollout.lean_qwen2.LeanQwen2` (logits equal to
            transformers' up to float rounding); False always uses the model's own forward.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str | torch.device | None = None,
        max_batch_size: int = 32,
        seed: int = 0,
        eos_token_ids: Sequence[int] | None = None,
        lean: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.lean = lean
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.eos_token_ids = list(eos_token_ids) if eos_token_ids is not None else _eos_ids(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad if pad is not None else (self.eos_token_ids or [0])[0])
        self._eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=self.device)
        self._stop_tables: dict[tuple[str, ...], torch.Tensor] = {}
        # peft wrappers hide the base forward's keywords behind **kwargs but pass them through
        fwd = model.get_base_model().forward if hasattr(model, "get_base_model") else model.forward
        params = inspect.signature(fwd).parameters
        self._keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self._cache_kw = cache_keyword(model)

    # -- weights --------------------------------------------------------------------------------

    def update_weights(self, weights: Any) -> None:
        """Load ``weights`` (a state dict, or a module whose ``state_dict()`` is used) into the model.

        A no-op when ``weights`` is the engine's own model (the HF engine shares the trainer's model).
        """
        if weights is self.model:
            return
        state = weights.state_dict() if hasattr(weights, "state_dict") else weights
        self.model.load_state_dict(state)

    def sync(self) -> None:
        """Nothing to do: the engine generates with the training model's live weights."""

    # -- generation -----------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """Token ids of each prompt (text is encoded without adding special tokens: chat templates have them)."""
        return encode_prompts(self.tokenizer, prompts)

    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 128,
        stop: Sequence[str] = ("</action>",),
        seed: int | None = None,
    ) -> list[GenerationOutput]:
        """Generate one response per prompt (outputs in prompt order). ``seed`` overrides the engine generator."""
        check_sampling_args(temperature, top_p, max_new_tokens)
        stop = tuple(s for s in stop if s)
        prompt_ids = self.encode(prompts)
        generator = self.generator if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        # chunk by prompt length so that rows of a chunk need little padding
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        outputs: list[GenerationOutput | None] = [None] * len(prompt_ids)
        was_training = bool(getattr(self.model, "training", False))
        self.model.eval()
        try:
            for start in range(0, len(order), self.max_batch_size):
                chunk = order[start : start + self.max_batch_size]
                results = self._generate_batch(
                    [prompt_ids[i] for i in chunk], temperature, top_p, max_new_tokens, stop, generator
                )
                for i, out in zip(chunk, results):
                    outputs[i] = out
        finally:
            if was_training:
                self.model.train()
        return [o for o in outputs if o is not None]

    def _stop_table(self, stop: tuple[str, ...], vocab_size: int) -> torch.Tensor:
        """Bool ``[vocab_size]``: token text may complete one of ``stop`` (contains a stop string's last char)."""
        table = self._stop_tables.get(stop)
        if table is not None and table.numel() == vocab_size:
            return table
        last_chars = {s[-1] for s in stop}
        table = torch.ones(vocab_size, dtype=torch.bool)
        if all(32 < ord(c) < 127 for c in last_chars):
            # printable ASCII maps to itself in byte-level BPE and sentencepiece vocabularies;
            # byte-fallback tokens ("<0x3E>") and ids past the tokenizer stay conservatively True.
            n = min(len(self.tokenizer), vocab_size)
            pieces = self.tokenizer.convert_ids_to_tokens(list(range(n)))
            table[:n] = torch.tensor(
                [
                    p is None or any(c in p for c in last_chars) or (p.startswith("<0x") and p.endswith(">"))
                    for p in pieces
                ],
                dtype=torch.bool,
            )
        table = table.to(self.device)
        self._stop_tables[stop] = table
        return table

    def _stepper(self, rows: int, width: int) -> Any:
        """The incremental forward of one batch: :class:`~hiper.rollout.lean_qwen2.LeanQwen2` when it covers the
        model, else :class:`_CachedForward` (transformers' forward with a ``DynamicCache``); both take
        ``forward(input_ids, position_ids, key_mask) -> last logits`` and ``keep(rows)``."""
        if self.lean and lean_qwen2.supports(self.model):
            return lean_qwen2.LeanQwen2(self.model, rows, width)
        return _CachedForward(self.model, self._cache_kw, self._keep_kw)

    @staticmethod
    def _choose(
        logits: torch.Tensor,
        raw_logp: torch.Tensor,
        temperature: float,
        top_p: float,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next token ``[n]`` and its log-prob ``[n]`` under the sampling distribution.

        ``logits`` / ``raw_logp``: ``[n, vocab]`` raw logits and their ``log_softmax`` (reused when
        ``temperature == 1`` and ``top_p == 1``, where the sampling distribution is the raw one).
        """
        if temperature == 0:
            token = logits.argmax(dim=-1)
            return token, torch.zeros_like(token, dtype=torch.float32)
        if temperature == 1.0 and top_p >= 1.0:
            logp = raw_logp
        else:
            scaled = logits / temperature
            if top_p < 1.0:
                sorted_logits, sorted_idx = scaled.sort(dim=-1, descending=True)
                probs = sorted_logits.softmax(dim=-1)
                # drop a token when the tokens ranked above it already cover top_p (the top token stays)
                drop = probs.cumsum(dim=-1) - probs >= top_p
                sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
                scaled = torch.full_like(scaled, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
            logp = scaled.log_softmax(dim=-1)
        # inverse-CDF sampling: one uniform per row instead of one random number per vocabulary entry
        # (drawing 150k exponentials per row dominated CPU decoding). The float64 CDF is exact enough;
        # searchsorted(right=True) can never land on a zero-probability token.
        cdf = logp.exp().cumsum(dim=-1, dtype=torch.float64)
        u = torch.rand((logp.shape[0], 1), generator=generator, device=logp.device, dtype=torch.float64)
        token = (
            torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1).clamp_(max=logp.shape[-1] - 1)
        )
        return token, logp.gather(-1, token[:, None]).squeeze(-1)

    @torch.no_grad()
    def _generate_batch(
        self,
        prompts: list[list[int]],
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        stop: tuple[str, ...],
        generator: torch.Generator,
    ) -> list[GenerationOutput]:
        dev, n = self.device, len(prompts)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        step = self._stepper(n, width + max_new_tokens)
        logits = step.forward(input_ids, pos, mask)
        next_pos = pos[:, -1] + 1

        tokens = torch.full((n, max_new_tokens), self.pad_token_id, dtype=torch.long, device=dev)
        logprobs = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=dev)
        sampling_logprobs = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=dev)
        lengths = torch.zeros(n, dtype=torch.long, device=dev)
        finish: list[FinishReason] = ["length"] * n
        rows = torch.arange(n, device=dev)  # original row of each batch row (cache rows shrink)
        running = torch.ones(n, dtype=torch.bool, device=dev)  # per batch row
        stop_table = self._stop_table(stop, logits.shape[-1]) if stop else None
        window = max((len(s) for s in stop), default=0) + 2  # tokens covering the longest stop string

        for t in range(max_new_tokens):
            raw_logp = logits.log_softmax(dim=-1)
            token, sampled_lp = self._choose(logits, raw_logp, temperature, top_p, generator)
            raw_lp = raw_logp.gather(-1, token[:, None]).squeeze(-1)
            live = rows[running]
            tokens[live, t] = token[running]
            logprobs[live, t] = raw_lp[running]
            sampling_logprobs[live, t] = sampled_lp[running]
            lengths[live] += 1

            ended = running & torch.isin(token, self._eos)
            for r in rows[ended].tolist():
                finish[r] = "eos"
            if stop_table is not None:
                candidates = running & ~ended & stop_table[token]
                for b in candidates.nonzero().flatten().tolist():
                    r = int(rows[b])
                    tail = tokens[r, max(0, t + 1 - window) : t + 1].tolist()
                    if any(s in self.tokenizer.decode(tail, skip_special_tokens=False) for s in stop):
                        finish[r] = "stop"
                        ended[b] = True
            running &= ~ended
            if t == max_new_tokens - 1 or not bool(running.any()):
                break
            # stopped rows stop growing: masked pad input now, dropped from the cache once enough stopped
            if float((~running).float().mean()) >= _COMPACT_FRACTION and step.can_compact:
                keep = running.nonzero().flatten()
                step.keep(keep)
                rows, mask, next_pos, token = rows[keep], mask[keep], next_pos[keep], token[keep]
                running = running[keep]
            token = torch.where(running, token, torch.full_like(token, self.pad_token_id))
            mask = torch.cat([mask, running.long()[:, None]], dim=1)
            logits = step.forward(token[:, None], next_pos[:, None], mask)
            next_pos = next_pos + 1

        lengths_list = lengths.tolist()
        tokens_list = tokens.tolist()
        logprobs_list = logprobs.tolist()
        sampling_list = sampling_logprobs.tolist()
        outputs = []
        for i, p in enumerate(prompts):
            k = lengths_list[i]
            ids = tokens_list[i][:k]
            outputs.append(
                GenerationOutput(
                    prompt_ids=list(p),
                    response_ids=ids,
                    logprobs=logprobs_list[i][:k],
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    finish_reason=finish[i],
                    sampling_logprobs=sampling_list[i][:k],
                )
            )
        return outputs


class _CachedForward:
    """transformers' own forward with a ``DynamicCache``, behind :class:`~hiper.rollout.lean_qwen2.LeanQwen2`'s
    incremental interface (for any model the lean path does not cover)."""

    def __init__(self, model: Any, cache_kw: str, keep_kw: str | None) -> None:
        from transformers import DynamicCache

        self.model, self.cache = model, DynamicCache()
        # prefill keeps only the last position's logits (no [batch, prompt, vocab] tensor)
        self.kwargs: dict[str, Any] = {cache_kw: self.cache, **({keep_kw: 1} if keep_kw is not None else {})}
        self.can_compact = hasattr(self.cache, "batch_select_indices")

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=key_mask, position_ids=position_ids, use_cache=True,
                         **self.kwargs)
        return out.logits[:, -1, :].float()

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)


__all__ = ["HFEngine", "cache_keyword"]

"""``VLLMEngine``: the :class:`~hiper.rollout.engine.GenerationEngine` interface over vLLM (extra ``hiper[vllm]``).

The engine is split in two so that its contract can be tested without vLLM or a GPU:

* :class:`VLLMEngine` owns everything the rollout loop relies on -- prompt encoding, the stop rules
  (``</action>`` kept, EOS kept), the finish-reason mapping, ``text`` decoding and the per-token
  log-probs -- and talks to a *backend* object through two calls;
* a backend implements ``generate(prompt_token_ids, sampling) -> list[BackendOutput]`` and
  ``load_weights(named_tensors)``. :class:`VLLMBackend` wraps ``vllm.LLM`` (vLLM is imported lazily,
  inside its constructor, so this module imports fine without vLLM); tests inject a fake backend
  driven by a small transformers model and compare the engine with :class:`~hiper.rollout.hf.HFEngine`.

vLLM semantics the engine depends on (checked by ``tests/test_vllm_engine_gpu.py`` on a GPU):

* ``SamplingParams(logprobs=0)`` returns, per generated position, a dict holding the sampled token's
  log-prob. With ``LLM(logprobs_mode="raw_logprobs")`` (the vLLM >= 0.10.2 default, set explicitly
  here) that is ``log_softmax`` of the raw logits -- temperature 1, no top-p -- i.e. the same number
  :class:`~hiper.rollout.hf.HFEngine` reports (see :mod:`hiper.rollout.engine` for the convention).
* ``include_stop_str_in_output=True`` keeps the stop string; the output ``token_ids`` end with the token
  that completed it. ``finish_reason == "stop"`` with ``stop_reason`` a ``str`` (stop string), an ``int``
  (a ``stop_token_ids`` entry) or ``None`` (the model's EOS); the EOS / stop token is kept in ``token_ids``.
* ``text`` is re-decoded from the token ids (vLLM cuts its own text at the stop string, HF does not), so
  both engines give the env manager byte-identical text for identical ids.

Weight sync: :meth:`VLLMEngine.update_weights` streams ``(name, tensor)`` pairs into the running
vLLM model's ``load_weights`` and then resets the prefix cache, whose KV blocks were computed with
the old weights and would otherwise be reused for prompts sharing a prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from hiper.rollout.engine import FinishReason, GenerationOutput, check_sampling_args, encode_prompts
from hiper.rollout.weights import has_lora, merged_state_dict

__all__ = [
    "BackendOutput",
    "SamplingSpec",
    "VLLMBackend",
    "VLLMEngine",
    "backend_output_from_vllm",
    "generation_eos_token_ids",
    "named_tensors",
    "vllm_sampling_kwargs",
]


@dataclass(frozen=True)
class SamplingSpec:
    """What the engine asks a backend for, per batch (backend-neutral).

    ``temperature == 0`` is greedy. ``stop`` strings are kept in the output; ``stop_token_ids`` end a
    response and are kept too. ``seed``: per-batch seed (request ``i`` uses ``seed + i``), or None.
    """

    temperature: float
    top_p: float
    max_new_tokens: int
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None


@dataclass
class BackendOutput:
    """One generated response from a backend.

    ``token_ids``: generated ids including the EOS / stop token or the token that completed a stop
    string. ``logprobs``: one float per token, raw-logit ``log_softmax`` of that token.
    ``finish_reason``: ``"stop"`` or ``"length"`` (vLLM's names). ``stop_reason``: the stop string
    (``str``), the stop token id (``int``) or ``None`` (EOS, or length).
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    stop_reason: str | int | None = None


@runtime_checkable
class GenerationBackend(Protocol):
    """The two calls :class:`VLLMEngine` makes; everything vLLM-specific lives behind them."""

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingSpec
    ) -> list[BackendOutput]: ...

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None: ...


def vllm_sampling_kwargs(sampling: SamplingSpec) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for ``sampling`` (pure Python; tested without vLLM).

    ``logprobs=0`` asks for the sampled token's log-prob only; ``include_stop_str_in_output`` keeps
    ``</action>``; ``skip_special_tokens`` only affects vLLM's own text, which the engine ignores.
    """
    kwargs: dict[str, Any] = {
        "n": 1,
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p) if sampling.temperature > 0 else 1.0,
        "top_k": -1,
        "max_tokens": int(sampling.max_new_tokens),
        "stop": list(sampling.stop),
        "stop_token_ids": list(sampling.stop_token_ids),
        "include_stop_str_in_output": True,
        "logprobs": 0,
        "skip_special_tokens": True,
        "detokenize": bool(sampling.stop),  # stop strings need vLLM's incremental detokenizer
    }
    if sampling.seed is not None:
        kwargs["seed"] = int(sampling.seed)
    return kwargs


def backend_output_from_vllm(request_output: Any) -> BackendOutput:
    """Convert one ``vllm.RequestOutput`` (first completion) into a :class:`BackendOutput`.

    ``completion.logprobs`` is a list (one per generated token) of ``{token_id: Logprob}`` dicts that
    contain at least the sampled token; a missing entry is an error, never a silent 0.
    """
    completion = request_output.outputs[0]
    token_ids = [int(t) for t in completion.token_ids]
    per_pos = completion.logprobs
    if per_pos is None or len(per_pos) != len(token_ids):
        got = None if per_pos is None else len(per_pos)
        raise RuntimeError(
            f"vLLM returned {got} log-prob entries for {len(token_ids)} tokens; request logprobs=0 "
            "in SamplingParams"
        )
    logprobs = []
    for pos, (tok, entry) in enumerate(zip(token_ids, per_pos)):
        lp = entry.get(tok) if hasattr(entry, "get") else None
        if lp is None:
            raise RuntimeError(f"vLLM log-probs at position {pos} lack the sampled token {tok}")
        logprobs.append(float(getattr(lp, "logprob", lp)))
    return BackendOutput(
        token_ids=token_ids,
        logprobs=logprobs,
        finish_reason=str(completion.finish_reason or "length"),
        stop_reason=getattr(completion, "stop_reason", None),
    )


def named_tensors(weights: Any) -> list[tuple[str, Any]]:
    """``(name, tensor)`` pairs from a module (``named_parameters`` + buffers via ``state_dict``), a
    state dict, or an iterable of pairs. Names are HF checkpoint names (what ``load_weights`` expects).

    A peft LoRA module is sent merged (``W + B A * alpha / r``) under its base model's HF names
    (:func:`hiper.rollout.weights.merged_state_dict`); raw adapter tensors (``.lora_A.`` / ``.base_layer.``
    names, which vLLM cannot load) are refused with an error."""
    if hasattr(weights, "state_dict") and callable(weights.state_dict):
        weights = merged_state_dict(weights) if has_lora(weights) else weights.state_dict()
    pairs = [(str(k), v) for k, v in weights.items()] if isinstance(weights, dict) else list(weights)
    for p in pairs:
        if not (isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)):
            raise TypeError("weights must be a module, a state dict, or an iterable of (name, tensor) pairs")
        if ".lora_" in p[0] or ".base_layer." in p[0]:
            raise ValueError(
                f"{p[0]!r} is a peft LoRA name vLLM cannot load: pass the peft model itself (merged "
                "automatically) or hiper.rollout.weights.merged_state_dict(model)"
            )
    return pairs


class VLLMBackend:
    """A ``vllm.LLM`` in this process behind the backend interface.

    Args:
        model: HF model id or local folder (the policy checkpoint the trainer starts from).
        tokenizer: tokenizer id/folder; default ``model``.
        gpu_memory_utilization, tensor_parallel_size, dtype, max_model_len, enable_prefix_caching,
        seed: passed to ``vllm.LLM``.
        **llm_kwargs: any other ``vllm.LLM`` / ``EngineArgs`` keyword.

    ``logprobs_mode="raw_logprobs"`` is set unless given (see the module docstring). In-process weight
    loading needs the model reachable from this process: vLLM's V1 engine runs it in a separate
    process unless ``VLLM_ENABLE_V1_MULTIPROCESSING=0``; :meth:`load_weights` then falls back to
    ``LLM.collective_rpc`` and raises with that hint if neither works.
    """

    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        *,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        dtype: str = "bfloat16",
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError("rollout.engine=vllm needs vLLM: pip install 'hiper[vllm]'") from exc
        self._sampling_params_cls = SamplingParams
        llm_kwargs.setdefault("logprobs_mode", "raw_logprobs")
        kwargs = dict(
            model=model, tokenizer=tokenizer or model, gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size, dtype=dtype, enable_prefix_caching=enable_prefix_caching,
            seed=seed, **llm_kwargs,
        )  # fmt: skip
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        try:
            self.llm = LLM(**kwargs)
        except TypeError as exc:
            if "logprobs_mode" not in str(exc):
                raise
            # vLLM < 0.10.2 has no logprobs_mode; its V1 sampler already returns raw log-probs
            kwargs.pop("logprobs_mode")
            self.llm = LLM(**kwargs)

    @classmethod
    def from_llm(cls, llm: Any, sampling_params_cls: Any) -> VLLMBackend:
        """Wrap an existing ``vllm.LLM`` (or a stand-in with the same ``generate``) and its
        ``SamplingParams`` class without building a new engine (benchmarks share one LLM this way)."""
        backend = cls.__new__(cls)
        backend.llm = llm
        backend._sampling_params_cls = sampling_params_cls
        return backend

    def request_sampling_params(self, n: int, sampling: SamplingSpec) -> list[Any]:
        """``n`` ``SamplingParams``, one per request: ``vllm_sampling_kwargs(sampling)`` with request
        ``i`` seeded ``seed + i`` (distinct, reproducible streams) when ``sampling.seed`` is set."""
        base = vllm_sampling_kwargs(sampling)
        params = []
        for i in range(n):
            kw = dict(base)
            if sampling.seed is not None:
                kw["seed"] = int(sampling.seed) + i
            params.append(self._sampling_params_cls(**kw))
        return params

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingSpec
    ) -> list[BackendOutput]:
        """One :class:`BackendOutput` per prompt, in order (vLLM batches and schedules internally)."""
        params = self.request_sampling_params(len(prompt_token_ids), sampling)
        prompts = [{"prompt_token_ids": list(map(int, p))} for p in prompt_token_ids]
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        return [backend_output_from_vllm(o) for o in outputs]

    def _local_model(self) -> Any:
        engine = getattr(self.llm, "llm_engine", None)
        executor = getattr(engine, "model_executor", None)
        worker = getattr(executor, "driver_worker", None)
        worker = getattr(worker, "worker", worker)
        runner = getattr(worker, "model_runner", None)
        return getattr(runner, "model", None)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Load HF-named tensors into the running model, then drop the (now stale) prefix cache."""
        pairs = list(weights)
        model = self._local_model()
        if model is not None:
            model.load_weights(pairs)
        else:
            try:
                self.llm.collective_rpc(_load_weights_rpc, args=(pairs,))
            except Exception as exc:  # noqa: BLE001 - re-raised with the fix
                raise RuntimeError(
                    "could not reach the vLLM model to load weights; run with "
                    "VLLM_ENABLE_V1_MULTIPROCESSING=0 (in-process engine) or tensor_parallel_size=1"
                ) from exc
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if callable(reset):
            reset()


def _load_weights_rpc(worker: Any, pairs: list[tuple[str, Any]]) -> None:  # pragma: no cover - GPU only
    """Runs inside each vLLM worker process (``LLM.collective_rpc``)."""
    device = next(worker.model_runner.model.parameters()).device
    worker.model_runner.model.load_weights([(n, t.to(device)) for n, t in pairs])


def generation_eos_token_ids(model: str) -> list[int]:
    """The EOS ids in ``model``'s ``generation_config.json`` (Qwen2.5-Instruct: ``<|im_end|>`` and
    ``<|endoftext|>``); ``[]`` when the model has none or it cannot be read."""
    from transformers import GenerationConfig

    try:
        gen_eos = GenerationConfig.from_pretrained(model).eos_token_id
    except (OSError, ValueError):
        return []
    return [int(gen_eos)] if isinstance(gen_eos, int) else [int(i) for i in gen_eos or []]


class VLLMEngine:
    """:class:`~hiper.rollout.engine.GenerationEngine` over a vLLM (or fake) backend.

    Args:
        backend: an object with ``generate(prompt_token_ids, SamplingSpec)`` and ``load_weights(pairs)``
            (:class:`VLLMBackend`, or a fake in tests).
        tokenizer: the policy tokenizer (encodes text prompts, decodes ``text``, gives the EOS ids).
        eos_token_ids: ids that end a response (kept in ``response_ids``); default the tokenizer's EOS
            plus ``extra_eos_token_ids``. They are passed to the backend as ``stop_token_ids`` so both
            engines stop on exactly the same ids.
        source: the training policy (a module); :meth:`sync` pushes its weights into the backend, so a
            trainer that calls ``engine.sync()`` after each optimizer step keeps vLLM on-policy unchanged.
    """

    def __init__(
        self,
        backend: Any,
        tokenizer: Any,
        eos_token_ids: Sequence[int] | None = None,
        extra_eos_token_ids: Sequence[int] = (),
        source: Any = None,
    ) -> None:
        if not isinstance(backend, GenerationBackend):
            raise TypeError(
                f"{type(backend).__name__} lacks generate(prompt_token_ids, sampling) / load_weights"
            )
        self.backend = backend
        self.tokenizer = tokenizer
        if eos_token_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            ids = set([] if eos is None else ([eos] if isinstance(eos, int) else list(eos)))
            ids.update(int(i) for i in extra_eos_token_ids)
            eos_token_ids = sorted(ids)
        self.eos_token_ids = [int(i) for i in eos_token_ids]
        self._eos = set(self.eos_token_ids)
        self.weight_version = 0
        self.source = source

    @classmethod
    def from_pretrained(
        cls, model: str, tokenizer: Any = None, source: Any = None, **backend_kwargs: Any
    ) -> VLLMEngine:
        """Build a :class:`VLLMBackend` for ``model`` and its tokenizer (``AutoTokenizer`` of ``model``
        unless given). The EOS ids include the model's ``generation_config`` EOS (Qwen2.5-Instruct:
        ``<|im_end|>`` and ``<|endoftext|>``), as :class:`~hiper.rollout.hf.HFEngine` uses."""
        from transformers import AutoTokenizer

        tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model)
        extra = generation_eos_token_ids(model)
        return cls(VLLMBackend(model, **backend_kwargs), tok, extra_eos_token_ids=extra, source=source)

    # -- weights --------------------------------------------------------------------------------

    def update_weights(self, weights: Any) -> None:
        """Push new policy weights (a module, state dict or ``(name, tensor)`` pairs) into the backend."""
        self.backend.load_weights(named_tensors(weights))
        self.weight_version += 1

    def sync(self) -> None:
        """Push the ``source`` policy's current weights into vLLM (no-op without a ``source``).

        The built-in trainer calls ``engine.sync()`` after each optimizer step; vLLM keeps its own copy of
        the weights, so this is where it gets the update (a full state-dict copy, GPU to GPU).
        """
        if self.source is not None:
            self.update_weights(self.source)

    # -- generation -----------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """Token ids of each prompt (text encoded without special tokens: chat templates carry them)."""
        return encode_prompts(self.tokenizer, prompts)

    def _finish(self, out: BackendOutput, stop: tuple[str, ...]) -> FinishReason:
        if out.finish_reason == "length":
            return "length"
        if out.finish_reason != "stop":
            raise RuntimeError(f"unexpected backend finish_reason {out.finish_reason!r}")
        if isinstance(out.stop_reason, str):
            if out.stop_reason not in stop:
                raise RuntimeError(f"backend stopped on {out.stop_reason!r}, not one of {stop}")
            return "stop"
        if out.token_ids and out.token_ids[-1] in self._eos:
            return "eos"
        raise RuntimeError(
            f"backend reported a stop (stop_reason={out.stop_reason!r}) but the last token "
            f"{out.token_ids[-1:] or None} is not an EOS id {self.eos_token_ids}"
        )

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
        """One :class:`GenerationOutput` per prompt, in order (same contract as ``HFEngine.generate``).

        ``sampling_logprobs``: equal to ``logprobs`` when ``temperature == 1`` and ``top_p == 1``, zeros
        for greedy decoding, and left empty otherwise (vLLM reports one log-prob mode per engine; the
        raw one is what PPO's ``old_log_probs`` need).
        """
        check_sampling_args(temperature, top_p, max_new_tokens)
        stop = tuple(s for s in stop if s)
        prompt_ids = self.encode(prompts)
        if not prompt_ids:
            return []
        spec = SamplingSpec(
            temperature=float(temperature), top_p=float(top_p), max_new_tokens=int(max_new_tokens),
            stop=stop, stop_token_ids=tuple(self.eos_token_ids), seed=seed,
        )  # fmt: skip
        results = self.backend.generate(prompt_ids, spec)
        if len(results) != len(prompt_ids):
            raise RuntimeError(f"backend returned {len(results)} outputs for {len(prompt_ids)} prompts")
        outputs = []
        for p, r in zip(prompt_ids, results):
            if len(r.logprobs) != len(r.token_ids):
                raise RuntimeError(f"backend gave {len(r.logprobs)} log-probs for {len(r.token_ids)} tokens")
            if len(r.token_ids) > max_new_tokens:
                raise RuntimeError(f"backend generated {len(r.token_ids)} > max_new_tokens={max_new_tokens}")
            if temperature == 0:
                sampling_lp = [0.0] * len(r.token_ids)
            elif temperature == 1.0 and top_p == 1.0:
                sampling_lp = list(r.logprobs)
            else:
                sampling_lp = []
            outputs.append(
                GenerationOutput(
                    prompt_ids=list(p),
                    response_ids=list(r.token_ids),
                    logprobs=[float(x) for x in r.logprobs],
                    text=self.tokenizer.decode(r.token_ids, skip_special_tokens=True),
                    finish_reason=self._finish(r, stop),
                    sampling_logprobs=sampling_lp,
                )
            )
        return outputs


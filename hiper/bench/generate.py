"""``hiper bench generate``: generation tokens/s of hiper's :class:`~hiper.rollout.hf.HFEngine` against plain
``model.generate`` on the same prompts, with the same model, batch and sampling settings.

The prompts are real protocol prompts (:func:`hiper.bench.workload.build_prompts`: tasks of ``--env`` played by the
expert for 0..``--max-depth`` turns, chat-templated and tokenized once). Both sides get the same token ids, in
batches of ``--batch-size`` rows sorted by prompt length, and the same settings: temperature, top-p,
``max_new_tokens``, the model's EOS ids and the stop string ``</action>`` (``stop_strings`` on the raw side):

(a) ``raw_generate``: ``model.generate(input_ids, attention_mask, do_sample, temperature, top_p, max_new_tokens,
    eos_token_id, pad_token_id, stop_strings, tokenizer)`` on the left-padded batch, nothing else;
(b) ``hf_engine``: :meth:`HFEngine.generate` (which also returns every token's log-prob, decodes the texts and
    compacts its KV cache as rows stop).

Each side runs once untimed, then ``--repeats`` times, (a) and (b) interleaved with their order alternating; the
median tokens/s is reported, with ``ours_vs_raw = tokens_per_s(b) / tokens_per_s(a)``. Generated tokens are
counted from the outputs on each side (a raw row ends at its first EOS, inclusive, or at padding). Random
weights (``--model random:<preset>``) rarely write ``</action>`` or EOS, so nearly every row runs to the cap: the
figure then measures decoding at full batch. Prints one JSON line::

    hiper bench generate --model random:tiny --tokenizer ../shared/models/qwen2.5-instruct-tokenizer \\
        --n-prompts 8 --max-new-tokens 16 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from hiper.bench.workload import RANDOM_PRESETS, build_prompts, random_model_dir
from hiper.rollout.hf import HFEngine

STOP = "</action>"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help=f"HF folder, or random:<preset> ({', '.join(RANDOM_PRESETS)}) built with --tokenizer")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    parser.add_argument("--env", default="household", choices=["household", "alfworld", "webshop"])
    parser.add_argument("--n-prompts", type=int, default=64, help="prompts (default 64)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per generation batch (default all)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    parser.add_argument("--max-depth", type=int, default=4, help="expert turns before a prompt: U{0..max-depth}")
    parser.add_argument("--device", default=None, help="default cuda when available, else cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-model", default=None,
                        help="with random:<preset>, keep the built model in this folder (for hiper train/bench)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_generate(model: Any, tokenizer: Any, prompt_ids: list[list[int]], *, batch_size: int, temperature: float,
                 top_p: float, max_new_tokens: int, eos: list[int], pad: int, device: torch.device) -> int:
    """Plain ``model.generate`` over ``prompt_ids`` (left-padded batches sorted by length); returns the number of
    generated tokens (each row up to its first EOS inclusive, or up to padding)."""
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    sample = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
        "do_sample": False}
    total = 0
    for start in range(0, len(order), batch_size):
        rows = [prompt_ids[i] for i in order[start:start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos, pad_token_id=pad, stop_strings=[STOP], tokenizer=tokenizer,
                                 **sample)
        for row in out[:, width:].tolist():
            n = len(row)
            for j, tok in enumerate(row):
                if tok in eos:
                    n = j + 1
                    break
                if tok == pad:
                    n = j
                    break
            total += n
    return total


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.n_prompts < 1 or args.repeats < 1 or args.max_new_tokens < 1:
        raise SystemExit("hiper bench generate: --n-prompts, --repeats and --max-new-tokens must be >= 1")
    is_random = args.model.startswith("random:")
    if is_random and args.tokenizer is None:
        raise SystemExit("hiper bench generate: --model random:<preset> needs --tokenizer (a folder with the vocabulary)")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    path = args.model
    if is_random:
        path = str(random_model_dir(args.model.split(":", 1)[1], tokenizer, folder=args.save_model, seed=args.seed))
    elif not Path(path).exists():
        raise SystemExit(f"hiper bench generate: model folder {path} not found (nothing is downloaded)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    batch = args.batch_size or args.n_prompts
    prompts = build_prompts(args.env, args.n_prompts, tokenizer, seed=args.seed, max_depth=args.max_depth)
    # the engine's EOS ids (tokenizer + generation config) go to the raw side too
    engine = HFEngine(model, tokenizer, device=device, max_batch_size=batch, seed=args.seed)
    eos = engine.eos_token_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens}

    def ours() -> int:
        outs = engine.generate(prompts.prompt_ids, stop=(STOP,), **sampling)
        return sum(len(o.response_ids) for o in outs)

    def raw() -> int:
        return raw_generate(model, tokenizer, prompts.prompt_ids, batch_size=batch, eos=eos, pad=pad, device=device,
                            **sampling)

    def timed(fn: Any) -> tuple[float, int]:
        _sync(device)
        t0 = time.perf_counter()
        n = fn()
        _sync(device)
        return time.perf_counter() - t0, n

    torch.manual_seed(args.seed)
    timed(raw)  # warm-up: kernels, allocator, stop-string tables
    timed(ours)
    runs: dict[str, list[tuple[float, int]]] = {"raw_generate": [], "hf_engine": []}
    for rep in range(args.repeats):
        pair = [("raw_generate", raw), ("hf_engine", ours)]
        for name, fn in (pair if rep % 2 == 0 else pair[::-1]):
            runs[name].append(timed(fn))
    result: dict[str, Any] = {"benchmark": "generate", "model": args.model, "env": args.env,
                              "n_prompts": args.n_prompts, "batch_size": batch, "prompt_tokens": prompts.prompt_tokens,
                              "prompt_digest": prompts.digest, "max_new_tokens": args.max_new_tokens,
                              "temperature": args.temperature, "repeats": args.repeats, "device": str(device),
                              "dtype": args.dtype, "torch": torch.__version__}
    for name, rs in runs.items():
        result[name] = {"tokens_per_s": statistics.median(n / s for s, n in rs),
                        "seconds": [round(s, 4) for s, _ in rs], "tokens": [n for _, n in rs]}
    result["ours_vs_raw"] = result["hf_engine"]["tokens_per_s"] / result["raw_generate"]["tokens_per_s"]
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    if is_random and args.save_model is None:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    result["threads"] = torch.get_num_threads()
    return result


__all__ = ["add_arguments", "raw_generate", "run"]

"""``hiper bench iteration``: wall time of RL iterations by phase, generation throughput and peak memory.

Runs ``--warmup`` + ``--iterations`` iterations of any preset or YAML config with dotted overrides (the same
arguments as ``hiper train``) and prints one JSON line: per-iteration wall time (median, min, every run), the median
of each phase (``generate``: inside the policy, i.e. chat template, tokenization and generation; ``env``: resets,
prompt rendering, parsing, env steps; ``batch``; ``logprob``: old/reference log-probs and beta; ``critic``: critic
values; ``advantage``; ``critic_update``; ``actor_update``; ``update``: both updates, which overlap when
``trainer.parallel_phases`` runs them on two threads), generated tokens/s, turn samples, peak RSS (and peak CUDA
memory on a GPU). SFT is skipped unless ``--sft`` (then it runs first, untimed), so the policy is the config's
initial one::

    hiper bench iteration                                   # the cpu_demo preset, 3 timed iterations
    hiper bench iteration --iterations 5 trainer.parallel_phases=false
    hiper bench iteration --config alfworld_qwen2.5_1.5b model.path=/path/to/Qwen2.5-1.5B-Instruct   # a GPU config
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from typing import Any

import torch

from hiper.config import ConfigError, list_presets, load_config
from hiper.trainer.provenance import machine_info
from hiper.trainer.trainer import Trainer

PHASES = ("generate", "env", "batch", "logprob", "switch_prob", "critic", "advantage", "critic_update",
          "actor_update", "update")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default="cpu_demo", metavar="PRESET_OR_YAML",
                        help=f"preset name or YAML file (default cpu_demo). Presets: {', '.join(list_presets())}")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    parser.add_argument("--sft", action="store_true", help="run the config's SFT stage first (untimed)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.iterations < 1 or args.warmup < 0:
        raise SystemExit("hiper bench iteration: --iterations must be >= 1 and --warmup >= 0")
    overrides = list(args.overrides)
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"hiper bench iteration: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    total = args.warmup + args.iterations
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    if args.sft:
        trainer.sft()
    sft_s = time.perf_counter() - t0
    runs = [trainer.iteration() for _ in range(total)][args.warmup:]
    device = cfg.trainer.device
    out: dict[str, Any] = {
        "benchmark": "iteration",
        "config": args.config,
        "overrides": overrides,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "sft_s": sft_s if args.sft else None,
        "iteration_s": {"median": statistics.median(r["time/iteration"] for r in runs),
                        "min": min(r["time/iteration"] for r in runs),
                        "runs": [r["time/iteration"] for r in runs]},
        "phases_s": {p: statistics.median(r[f"time/{p}"] for r in runs) for p in PHASES if f"time/{p}" in runs[0]},
        "generated_tokens_per_s": statistics.median(r["perf/generated_tokens_per_s"] for r in runs),
        "update_tokens_per_s": statistics.median(r["perf/update_tokens_per_s"] for r in runs),
        "turn_samples": statistics.median(r["perf/turn_samples"] for r in runs),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": device,
        "parallel_phases": cfg.trainer.parallel_phases,
        **machine_info(),  # CPU, kernel level, threads, versions: timings compare only where these agree
    }
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


__all__ = ["PHASES", "add_arguments", "peak_rss_mb", "run"]

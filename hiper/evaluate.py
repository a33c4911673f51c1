"""``hiper eval``: run a policy on a fixed task panel and report success per task type.

Policies: ``expert`` (the env's scripted expert; for WebShop its goal-reading oracle), ``oracle``
(alias of ``expert``), ``random`` (uniform admissible action in a well-formed response), or a path:
an HF model folder, a checkpoint folder with ``policy/`` inside, or a run folder with
``checkpoints/latest``. Checkpoints are run greedily by default (``--temperature 0``).

Statistics (also in ``docs/eval.md``): success rates come with a 95 % **Wilson score** interval;
the mean score (WebShop's raw reward, 0/1 elsewhere) with a 95 % **percentile bootstrap** interval
(2000 resamples of episodes, seeded). Format / switch rates are pooled over all turns.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hiper.envs import ENV_FAMILIES, ENV_REGISTRY, env_class, import_plugins, make_batch, task_panel
from hiper.protocol.prompts import PROMPT_PROTOCOL, RENDERERS
from hiper.rollout.hf import HFEngine
from hiper.rollout.loop import run_episodes
from hiper.rollout.manager import EnvManager
from hiper.rollout.policies import EnginePolicy, ExpertPolicy, RandomPolicy
from hiper.rollout.records import Trajectory, TurnRecord, episode_stats
from hiper.trainer.checkpoint import CheckpointCorrupt, load_policy, policy_dir
from hiper.trainer.samples import append_jsonl, eval_records

#: default evaluation split per env (ALFWorld's verl-agent evaluation uses valid_seen, spec §2.7).
DEFAULT_SPLIT = {"household": "valid_seen", "alfworld": "valid_seen", "webshop": "test"}
#: default worker processes per env (ALFWorld's TextWorld games are heavy: run them in a pool).
DEFAULT_WORKERS = {"alfworld": 2}
Z95 = 1.959963984540054
#: default cap on episodes run at once in-process (bounds memory: every episode holds one env)
MAX_IN_PROCESS = 1024


# --------------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------------


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (``(0, 1)`` when ``n == 0``)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    values: Sequence[float], n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean of ``values``."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def summarize(trajectories: Sequence[Trajectory], seed: int = 0) -> dict[str, Any]:
    """:func:`~hiper.rollout.records.episode_stats` plus confidence intervals per task type and overall."""
    stats = episode_stats(trajectories)
    n = stats["n_episodes"]
    stats["success_ci95"] = wilson_interval(stats["success"] * n, n)
    stats["score_ci95"] = bootstrap_interval([t.score for t in trajectories], seed=seed)
    for name, d in stats["per_type"].items():
        d["success_ci95"] = wilson_interval(d["success"] * d["n"], int(d["n"]))
        d["length"] = sum(t.length for t in trajectories if (t.task_type or "?") == name) / d["n"]
    return stats


# --------------------------------------------------------------------------------------------------
# policies
# --------------------------------------------------------------------------------------------------


def resolve_policy_dir(path: str | Path) -> tuple[Path, Path | None]:
    """The HF model folder of ``path`` (:func:`hiper.trainer.checkpoint.policy_dir`: a model folder, a checkpoint
    folder, a checkpoints root or a run folder) and the run config (``config.yaml``) next to it, if any. Finds,
    does not verify: :func:`hiper.trainer.checkpoint.load_policy` checks the manifest once, when it loads."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"policy {str(path)!r} is neither expert/random/oracle nor an existing path")
    try:
        p = policy_dir(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"no HF model folder (config.json) found at {p}") from None
    config = next((c for c in (p / "config.yaml", p.parent / "config.yaml") if c.is_file()), None)
    return p, config


def load_run_env_config(config_path: Path | None) -> dict[str, Any]:
    """The ``env`` section of a run's ``config.yaml`` (``{}`` when absent)."""
    if config_path is None:
        return {}
    import yaml

    data = yaml.safe_load(config_path.read_text()) or {}
    env = data.get("env", {}) if isinstance(data, dict) else {}
    return env if isinstance(env, dict) else {}


def build_policy(args: argparse.Namespace, manager: EnvManager) -> tuple[Any, str]:
    """The policy named by ``args.policy`` and a short description for the report."""
    name = args.policy
    if name in ("expert", "oracle"):
        return ExpertPolicy(manager), name
    if name == "random":
        return RandomPolicy(seed=args.seed), name
    folder, _ = resolve_policy_dir(name)
    device = _device(args.device)
    # verifies the checkpoint's manifest (once), merges a bare LoRA adapter, loads the tokenizer as saved
    model, tokenizer = load_policy(folder, dtype="auto" if device.startswith("cuda") else torch.float32,
                                   progress=not args.no_progress)
    model = model.to(device).eval()
    engine = HFEngine(model, tokenizer, device=device, max_batch_size=args.batch_size, seed=args.seed)
    policy = EnginePolicy(
        engine,
        tokenizer,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
    )
    return policy, f"{folder} (T={args.temperature}, top_p={args.top_p}, device={device})"


def _device(name: str) -> str:
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _kv(text: str) -> tuple[str, Any]:
    """``k=v`` with ``v`` parsed as YAML (numbers, booleans, lists), else kept as a string."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default=None, help=f"environment: {', '.join(sorted(ENV_REGISTRY))} or one a plugin "
                        "registers (default: a run folder's env, else household)")
    parser.add_argument("--env-plugin", action="append", default=[], metavar="MODULE",
                        help="module that registers an env (repeatable; a run folder's env.plugins are imported too)")
    parser.add_argument("--split", default=None, help=f"task split (default per env: {DEFAULT_SPLIT})")
    parser.add_argument("--n", type=int, default=None, help="first N tasks of the split (default: all)")
    parser.add_argument(
        "--seed", type=int, default=0, help="task-panel seed; also seeds random/sampling policies"
    )
    parser.add_argument(
        "--policy",
        default="expert",
        help="expert | oracle | random | path to an HF model folder, checkpoint folder or run folder",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="env worker processes (default: alfworld 2, else 0 = in-process)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="episodes run at once (default: 16 per worker, else up to 1024 in-process)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds one env reset/step/expert may take in a pool worker before it is restarted (default 600)",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="episode horizon (env kwarg max_steps)")
    parser.add_argument(
        "--history-length",
        type=int,
        default=None,
        help="(observation, action) pairs in the prompt (default 2)",
    )
    parser.add_argument(
        "--prompt",
        choices=("auto", *RENDERERS),
        default="auto",
        help="prompt renderer; auto = the checkpoint's run config (env.prompt), else default",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature for checkpoints (0 = greedy)"
    )
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generation forward batch")
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    parser.add_argument(
        "--env-kwarg",
        action="append",
        type=_kv,
        default=[],
        metavar="K=V",
        help="env constructor kwarg (repeatable)",
    )
    parser.add_argument(
        "--out", default=None, help="write the results (summary + per-episode rows) as JSON here, and the episodes "
        "(texts, parse, segments) beside it as <name>.trajectories.jsonl for hiper view"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_env(policy: str) -> dict[str, Any]:
    """The ``env`` section of the run config next to a saved ``policy`` (``{}`` for the built-in policies)."""
    if policy in ("expert", "oracle", "random"):
        return {}
    return load_run_env_config(resolve_policy_dir(policy)[1])


def _env_setup(args: argparse.Namespace, run_env: dict[str, Any]) -> tuple[dict[str, Any], str, int]:
    """``(env kwargs, renderer name, history_length)`` from CLI args over the checkpoint's run config."""
    if run_env.get("name", args.env) != args.env:
        run_env = {"prompt": run_env.get("prompt"), "history_length": run_env.get("history_length")}
    kwargs = dict(run_env.get("kwargs") or {})
    if run_env.get("max_steps") is not None:
        kwargs["max_steps"] = int(run_env["max_steps"])
    if args.max_steps is not None:
        kwargs["max_steps"] = args.max_steps
    kwargs.update(dict(args.env_kwarg))
    prompt = args.prompt if args.prompt != "auto" else (run_env.get("prompt") or "default")
    history = (
        args.history_length if args.history_length is not None else int(run_env.get("history_length") or 2)
    )
    return kwargs, prompt, history


def _resolve_env(args: argparse.Namespace, run_env: dict[str, Any]) -> None:
    """Fill ``args.env`` (a run folder's env when not given) after importing the env plugins."""
    import_plugins([*run_env.get("plugins", []), *args.env_plugin])
    if args.env is None:
        args.env = run_env.get("name", "household")
    if args.env not in ENV_REGISTRY:
        raise ValueError(f"unknown env {args.env!r}; known: {', '.join(sorted(ENV_REGISTRY))} (an env of your own: "
                         "--env-plugin MODULE)")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation described by ``args``; returns the JSON-able results."""
    run_env = _run_env(args.policy)  # read once: the env lookup and the env setup both need it
    _resolve_env(args, run_env)
    split = args.split or DEFAULT_SPLIT.get(args.env, "test")
    env_kwargs, prompt, history_length = _env_setup(args, run_env)
    tasks = task_panel(args.env, split, n=args.n, seed=args.seed)
    if not tasks:
        raise ValueError(f"split {split!r} of env {args.env!r} has no tasks")
    workers = args.workers if args.workers is not None else DEFAULT_WORKERS.get(args.env, 0)
    concurrency = args.concurrency or (16 * workers if workers > 0 else min(len(tasks), MAX_IN_PROCESS))
    if args.policy not in ("expert", "oracle") and "expert_plan" not in env_kwargs:
        # ALFWorld plans the expert's route at reset (seconds to minutes for some pick_two_obj games):
        # skip it when no expert is asked for
        if "expert_plan" in inspect.signature(env_class(args.env).__init__).parameters:
            env_kwargs["expert_plan"] = False
    batch = make_batch(args.env, n_workers=workers, timeout_s=args.timeout, **env_kwargs)
    manager = EnvManager(
        batch, family=ENV_FAMILIES[args.env], history_length=history_length, renderer=RENDERERS[prompt],
        protocol=PROMPT_PROTOCOL[prompt],
    )
    try:
        policy, policy_desc = build_policy(args, manager)
        trajectories: list[Trajectory] = []
        t0 = time.perf_counter()
        with _progress(args.no_progress, len(tasks)) as advance:
            for start in range(0, len(tasks), concurrency):

                def on_turn(records: list[TurnRecord]) -> None:
                    advance(sum(r.done for r in records))

                trajectories += run_episodes(
                    manager, policy, tasks[start : start + concurrency], on_turn=on_turn
                )
        wall = time.perf_counter() - t0
    finally:
        manager.close()
    stats = summarize(trajectories, seed=args.seed)
    if args.out:  # the episodes themselves, for hiper view
        append_jsonl(trajectories_path(args.out), eval_records(trajectories, args.env))
    return {
        "env": args.env,
        "split": split,
        "policy": args.policy,
        "policy_detail": policy_desc,
        "seed": args.seed,
        "env_kwargs": env_kwargs,
        "prompt": prompt,
        "history_length": history_length,
        "workers": workers,
        "wall_s": wall,
        "episodes_per_s": len(trajectories) / wall if wall > 0 else None,
        "summary": stats,
        "episodes": [
            {
                "task": str(t.task),
                "task_type": t.task_type,
                "won": t.won,
                "score": t.score,
                "length": t.length,
                "n_switches": t.n_switches,
                "n_invalid": t.n_invalid,
                "truncated": t.truncated,
                "truncation_reason": t.truncation_reason,
            }
            for t in trajectories
        ],
    }


class _progress:
    """Rich progress bar over finished episodes (a no-op when disabled)."""

    def __init__(self, disabled: bool, total: int) -> None:
        self.disabled, self.total = disabled, total
        self._bar: Any = None

    def __enter__(self) -> Any:
        if self.disabled:
            return lambda k: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("episodes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
        )
        self._bar.__enter__()
        task = self._bar.add_task("eval", total=self.total)
        return lambda k: self._bar.advance(task, k) if k else None

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def print_report(results: dict[str, Any]) -> None:
    """A rich table: success / CI / score / length per task type, then the overall row and rates."""
    from rich.console import Console
    from rich.table import Table

    s = results["summary"]
    table = Table(
        title=f"hiper eval: {results['env']}/{results['split']}, policy {results['policy']} ({s['n_episodes']} episodes)"
    )
    for col in ("task type", "n", "success %", "95% CI (Wilson)", "score", "length"):
        table.add_column(col, justify="left" if col == "task type" else "right")

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    for name, d in s["per_type"].items():
        lo, hi = d["success_ci95"]
        table.add_row(
            name,
            str(d["n"]),
            pct(d["success"]),
            f"[{pct(lo)}, {pct(hi)}]",
            f"{d['score']:.3f}",
            f"{d['length']:.1f}",
        )
    lo, hi = s["success_ci95"]
    slo, shi = s["score_ci95"]
    table.add_section()
    table.add_row(
        "all",
        str(s["n_episodes"]),
        pct(s["success"]),
        f"[{pct(lo)}, {pct(hi)}]",
        f"{s['score']:.3f}",
        f"{s['length']:.1f}",
        style="bold",
    )
    console = Console()
    console.print(table)
    console.print(
        f"score 95% CI (bootstrap) [{slo:.3f}, {shi:.3f}] | invalid-format rate {pct(s['invalid_rate'])}% | "
        f"switch rate {pct(s['switch_rate'])}% | KEEP-inconsistent {pct(s['keep_inconsistent_rate'])}% | "
        f"inadmissible {pct(s['inadmissible_rate'])}% | truncated {pct(s['truncated'])}% | "
        f"{results['wall_s']:.1f} s"
    )


def trajectories_path(out: str | Path) -> Path:
    """Where ``--out results.json`` puts its episodes: ``results.trajectories.jsonl`` beside it."""
    out = Path(out)
    return out.with_name(out.stem + ".trajectories.jsonl")


def main(args: argparse.Namespace) -> int:
    if args.n is not None and args.n < 1:
        print(f"hiper eval: error: --n {args.n}: give at least 1 task (or leave --n out for the whole split)",
              file=sys.stderr)
        return 2
    try:
        results = evaluate(args)
    except (FileNotFoundError, ValueError, ImportError, CheckpointCorrupt) as exc:
        # user errors (a policy path, a split, missing data or extras, a corrupt checkpoint): one line, exit 2
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"hiper eval: error: {first}", file=sys.stderr)
        return 2
    print_report(results)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=str))
        print(f"wrote {out} and the episodes to {trajectories_path(out)} (hiper view)")
    return 0


__all__ = [
    "add_arguments",
    "bootstrap_interval",
    "evaluate",
    "main",
    "resolve_policy_dir",
    "summarize",
    "wilson_interval",
]

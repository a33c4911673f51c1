"""``hiper compare``: a grid of arms {estimator} x {prompt} x {seed} on one budget, with one results table.

Every arm is ``hiper train`` with the same config and overrides plus the arm's own (``algorithm.adv_estimator``,
``env.prompt``, ``seed``; the group estimators also get ``env.group_size`` and no critic), run as its own process in
``OUT/<estimator>-<prompt>-s<seed>/``; ``--jobs`` arms run at once (one torch thread each). The grid is resumable:
an arm whose folder holds ``arm.json`` with status ``ok`` is not run again; a failed arm is rerun. ::

    hiper compare -o runs/cmp --estimators hae,gae,grpo --seeds 0,1,2 --jobs 2 trainer.total_iterations=40

``--shared-sft`` runs the SFT warm start once per (prompt, seed) (``hiper sft`` into ``OUT/sft-<prompt>-s<seed>/``)
and starts every arm of that prompt and seed from it (``model.path=...``, ``sft.enabled=false``): the estimators are
then compared from the very same policy (a paired comparison; their iteration-0 evaluations are identical), and the
grid pays for SFT once per prompt and seed instead of once per arm.

Output in ``OUT``: ``results.json`` (every arm with its status, eval curve and summary; one row per
estimator x prompt over seeds), ``results.md`` (the table) and ``curves.png`` (held-out success per arm group, mean
and min-max band over seeds). Per arm: final held-out success with a 95 % Wilson interval, the area under the
success curve (mean success over the evaluation points), and the first iteration reaching ``--threshold``. Per group:
mean, standard deviation and range over seeds. Failed arms are listed, never dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hiper.advantage import available
from hiper.advantage import get as get_estimator
from hiper.config import ConfigError, list_presets, load_config
from hiper.evaluate import wilson_interval
from hiper.protocol.prompts import PROMPT_PROTOCOL, RENDERERS
from hiper.trainer.logging import read_metrics

ARM_FILE = "arm.json"
SFT_FILE = "sft.json"


@dataclass
class Arm:
    """One training run of the grid and what it gave."""

    estimator: str
    prompt: str
    seed: int
    folder: str
    status: str = "pending"  # pending | ok | failed | skipped (done before) | not run (--report-only)
    seconds: float = 0.0
    error: str = ""
    curve: list[tuple[int, float]] = field(default_factory=list)  # (iteration, eval/success)
    eval_episodes: int = 0

    @property
    def name(self) -> str:
        return f"{self.estimator}-{self.prompt}-s{self.seed}"


def arm_overrides(estimator: str, prompt: str, seed: int, group_size: int) -> list[str]:
    """What distinguishes an arm: its estimator (and what the registry says it needs), prompt and seed."""
    est = get_estimator(estimator)
    out = [f"algorithm.adv_estimator={estimator}", f"env.prompt={prompt}", f"seed={seed}"]
    if est.needs_group:
        out.append(f"env.group_size={group_size}")
    if not est.needs_critic:
        out.append("critic.enabled=false")
    return out


def summarize_arm(arm: Arm, threshold: float) -> dict[str, Any]:
    """Final success with a 95 % Wilson interval, area under the curve, iterations to ``threshold``."""
    if not arm.curve:
        return {}
    final = arm.curve[-1][1]
    lo, hi = wilson_interval(final * arm.eval_episodes, arm.eval_episodes) if arm.eval_episodes else (math.nan,) * 2
    reach = next((it for it, s in arm.curve if s >= threshold), None)
    return {"final_success": final, "final_ci95": [lo, hi], "auc": statistics.fmean(s for _, s in arm.curve),
            "iterations_to_threshold": reach, "start_success": arm.curve[0][1]}


def read_curve(folder: Path) -> list[tuple[int, float]]:
    """``(step, eval/success)`` rows of a run's ``metrics.jsonl``, in step order."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return sorted((int(r["step"]), float(r["eval/success"])) for r in read_metrics(path) if "eval/success" in r)


def run_hiper(command: str, folder: Path, config: str | None, base: list[str], own: list[str]) -> tuple[str, float]:
    """``hiper <command> -o folder`` in its own process: the grid's ``base`` overrides, then one torch thread and
    jsonl logging (these win over ``base``), then the run's ``own`` overrides.

    Returns (the last line of its output when it exits non-zero, else ""; wall seconds)."""
    cmd = [sys.executable, "-m", "hiper.cli", command, "-o", str(folder), "--overwrite",
           *(["--config", config] if config else []), *base, "trainer.num_threads=1", "trainer.logger=[jsonl]", *own]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - t0
    if proc.returncode == 0:
        return "", seconds
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()
    return (tail[-1] if tail else f"exit {proc.returncode}"), seconds


def warm_start_overrides(policy: Path) -> list[str]:
    """Start an arm from a saved SFT policy folder instead of running SFT in it."""
    return [f"model.path={policy}", "model.tiny=null", "model.tokenizer=null", "sft.enabled=false"]


def run_shared_sft(folder: Path, arm: Arm, base: list[str], config: str | None, group_size: int) -> tuple[Path, str]:
    """``hiper sft`` for the (prompt, seed) of ``arm`` unless done before; returns (policy folder, error or "").

    It runs with ``arm``'s overrides (a flat prompt needs a flat estimator to pass the config check); SFT trains
    the policy alone, so which estimator of that prompt it names does not matter."""
    policy = folder / "checkpoints" / "sft" / "policy"
    done = folder / SFT_FILE
    if done.is_file() and json.loads(done.read_text()).get("status") == "ok" and policy.is_dir():
        return policy, ""
    error, seconds = run_hiper("sft", folder, config, base, arm_overrides(arm.estimator, arm.prompt, arm.seed, group_size))
    if error or not policy.is_dir():
        error = "shared SFT failed: " + (error or "no policy saved")
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps({"status": "failed" if error else "ok", "error": error, "prompt": arm.prompt,
                                "seed": arm.seed, "estimator": arm.estimator, "seconds": seconds}, indent=1))
    return policy, error


def run_arm(arm: Arm, base: list[str], config: str | None, eval_episodes: int, group_size: int,
            warm_start: tuple[Path, str] | None = None, report_only: bool = False) -> Arm:
    """Train one arm (``hiper train`` in its own process) unless it finished before; record how it went.
    ``warm_start`` = (policy folder, error) of a shared SFT: the arm starts from that policy (or fails with the
    SFT's error). ``report_only``: run nothing; an arm that has not finished is reported as ``not run``."""
    folder = Path(arm.folder)
    done = folder / ARM_FILE
    record = json.loads(done.read_text()) if done.is_file() else {}
    if record.get("status") == "ok":
        arm.status, arm.curve, arm.eval_episodes = "skipped", read_curve(folder), eval_episodes
        arm.seconds = float(record.get("seconds", 0.0))  # the wall time of the run that finished it
        return arm
    if report_only:
        arm.status = "not run"
        return arm
    if warm_start is not None and warm_start[1]:
        arm.status, arm.error = "failed", warm_start[1]
        folder.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(asdict(arm), indent=1))
        return arm
    error, arm.seconds = run_hiper("train", folder, config, base, [
        *arm_overrides(arm.estimator, arm.prompt, arm.seed, group_size),
        *(warm_start_overrides(warm_start[0]) if warm_start is not None else [])])
    arm.curve, arm.eval_episodes = read_curve(folder), eval_episodes
    if not error and arm.curve:
        arm.status = "ok"
    else:
        arm.status, arm.error = "failed", error or "no held-out evaluation logged"
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(asdict(arm), indent=1))
    return arm


def group_rows(arms: list[Arm], threshold: float) -> list[dict[str, Any]]:
    """One row per (estimator, prompt): seeds, statistics of the final success / AUC / iterations to threshold."""
    rows = []
    keys = sorted({(a.estimator, a.prompt) for a in arms})
    for est, prompt in keys:
        group = [a for a in arms if (a.estimator, a.prompt) == (est, prompt)]
        ok = [summarize_arm(a, threshold) for a in group if a.status in ("ok", "skipped") and a.curve]
        finals = [s["final_success"] for s in ok]
        reach = [s["iterations_to_threshold"] for s in ok if s["iterations_to_threshold"] is not None]
        rows.append({
            "estimator": est, "prompt": prompt, "seeds": [a.seed for a in group], "n_ok": len(ok),
            "failed": [a.name for a in group if a.status == "failed"],
            "final_mean": statistics.fmean(finals) if finals else None,
            "final_std": statistics.stdev(finals) if len(finals) > 1 else None,
            "final_min": min(finals) if finals else None, "final_max": max(finals) if finals else None,
            "start_mean": statistics.fmean(s["start_success"] for s in ok) if ok else None,
            "auc_mean": statistics.fmean(s["auc"] for s in ok) if ok else None,
            "reached_threshold": f"{len(reach)}/{len(ok)}",
            "iterations_to_threshold_mean": statistics.fmean(reach) if reach else None,
        })  # fmt: skip
    return rows


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def markdown(rows: list[dict[str, Any]], arms: list[Arm], threshold: float) -> str:
    lines = ["| estimator | prompt | seeds ok | held-out success, start -> final (mean) | final std | final range | "
             f"AUC (mean) | reached {threshold:g} | iterations to {threshold:g} (mean) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['estimator']} | {r['prompt']} | {r['n_ok']}/{len(r['seeds'])} | {_fmt(r['start_mean'])} -> "
                     f"{_fmt(r['final_mean'])} | {_fmt(r['final_std'])} | "
                     f"{_fmt(r['final_min']) + '-' + _fmt(r['final_max']) if r['n_ok'] else '-'} | "
                     f"{_fmt(r['auc_mean'])} | {r['reached_threshold']} | {_fmt(r['iterations_to_threshold_mean'], 1)} |")
    lines += ["", "| arm | status | final success [95 % CI] | AUC | seconds |", "|---|---|---|---|---|"]
    for a in arms:
        s = summarize_arm(a, threshold)
        ci = f"{_fmt(s['final_success'])} [{_fmt(s['final_ci95'][0])}, {_fmt(s['final_ci95'][1])}]" if s else "-"
        lines.append(f"| {a.name} | {a.status}{': ' + a.error if a.error else ''} | {ci} | "
                     f"{_fmt(s.get('auc')) if s else '-'} | {a.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def plot(arms: list[Arm], path: Path, title: str) -> Path | None:
    """Mean held-out success per (estimator, prompt) over seeds, with the min-max band."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for est, prompt in sorted({(a.estimator, a.prompt) for a in arms}):
        curves = [dict(a.curve) for a in arms if (a.estimator, a.prompt) == (est, prompt) and a.curve]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if not steps:
            continue
        mean = [statistics.fmean(c[s] for c in curves) for s in steps]
        ax.plot(steps, mean, marker="o", label=f"{est} / {prompt} (n={len(curves)})")
        ax.fill_between(steps, [min(c[s] for c in curves) for s in steps], [max(c[s] for c in curves) for s in steps],
                        alpha=0.15)
    ax.set_xlabel("RL iteration (0 = before RL)")
    ax.set_ylabel("held-out success")
    # the full [0, 1] range unless every curve stays low (then the band would be a flat line at the bottom)
    top = max((s for a in arms for _, s in a.curve), default=1.0)
    ax.set_ylim(0, 1 if top > 0.4 else max(0.1, 1.25 * top))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", "-o", required=True, metavar="DIR", help="the grid's folder")
    parser.add_argument("--config", "-c", default=None, metavar="PRESET_OR_YAML",
                        help=f"preset or YAML file for every arm (default cpu_demo). Presets: {', '.join(list_presets())}")
    parser.add_argument("--estimators", default="hae,gae,grpo", help=f"comma list of: {', '.join(available())}")
    parser.add_argument("--prompts", default=None, help=f"comma list of: {', '.join(RENDERERS)} (default: the config's)")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)), help="arms at once (default: cores)")
    parser.add_argument("--group-size", type=int, default=4, help="env.group_size of the group estimators")
    parser.add_argument("--threshold", type=float, default=0.5, help="held-out success threshold (iterations to it)")
    parser.add_argument("--shared-sft", action="store_true",
                        help="run SFT once per (prompt, seed) and start every arm of it from that policy")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the tables and the plot from the arms that finished (others: not run)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides for every arm")


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, list(args.overrides))
        estimators = [e.strip() for e in args.estimators.split(",") if e.strip()]
        unknown = [e for e in estimators if e not in available()]
        prompts = [p.strip() for p in (args.prompts or cfg.env.prompt).split(",") if p.strip()]
        bad_prompts = [p for p in prompts if p not in RENDERERS]
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if unknown or bad_prompts or not seeds or args.jobs < 1 or cfg.trainer.eval_every < 1:
            raise ConfigError(f"bad grid: unknown estimators {unknown}, prompts {bad_prompts}, seeds {seeds}, jobs "
                              f"{args.jobs}, trainer.eval_every={cfg.trainer.eval_every} (needs held-out evals >= 1)")
    except (ConfigError, ValueError) as exc:
        print(f"hiper compare: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # HAE needs the Plan-Execute answer: its pairs with a flat prompt are not arms of the ablation (spec §6.3)
    pairs = [(e, p) for e in estimators for p in prompts
             if not (get_estimator(e).needs_switch and PROMPT_PROTOCOL.get(p) == "flat")]
    left_out = sorted({f"{e} x {p}" for e in estimators for p in prompts} - {f"{e} x {p}" for e, p in pairs})
    arms = [Arm(e, p, s, str(out / f"{e}-{p}-s{s}")) for e, p in pairs for s in seeds]
    print(f"hiper compare: {len(arms)} arms, {args.jobs} at a time, in {out}"
          + (f" (left out, needs the Plan-Execute prompt: {', '.join(left_out)})" if left_out else ""), flush=True)
    warm: dict[tuple[str, int], tuple[Path, str]] = {}
    if args.shared_sft and not args.report_only:
        first: dict[tuple[str, int], Arm] = {}
        for a in arms:
            first.setdefault((a.prompt, a.seed), a)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            jobs = {k: pool.submit(run_shared_sft, out / f"sft-{k[0]}-s{k[1]}", a, list(args.overrides), args.config,
                                   args.group_size) for k, a in sorted(first.items())}
            for k, f in jobs.items():
                warm[k] = f.result()
                print(f"  sft-{k[0]}-s{k[1]}: {warm[k][1] or 'ok'}", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_arm, a, list(args.overrides), args.config, cfg.env.eval_episodes, args.group_size,
                               warm.get((a.prompt, a.seed)), args.report_only) for a in arms]
        for f in futures:
            a = f.result()
            print(f"  {a.name}: {a.status}{' (' + a.error + ')' if a.error else ''}", flush=True)
    rows = group_rows(arms, args.threshold)
    result = {"config": args.config or "cpu_demo", "overrides": list(args.overrides), "threshold": args.threshold,
              "shared_sft": bool(args.shared_sft), "report_only": bool(args.report_only),
              "groups": rows, "arms": [{**asdict(a), "summary": summarize_arm(a, args.threshold)} for a in arms]}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    table = markdown(rows, arms, args.threshold)
    (out / "results.md").write_text(table)
    png = plot(arms, out / "curves.png", f"{result['config']}: held-out success")
    print(table)
    print(f"hiper compare: results in {out / 'results.json'}" + (f", curves {png}" if png else ""))
    return 0 if args.report_only or all(a.status in ("ok", "skipped") for a in arms) else 1


__all__ = ["Arm", "add_arguments", "arm_overrides", "group_rows", "main", "read_curve", "run_shared_sft", "summarize_arm",
           "warm_start_overrides"]

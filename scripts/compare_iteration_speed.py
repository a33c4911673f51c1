"""Side-by-side iteration speed of this checkout and an older commit, in one run on one machine.

    .venv/bin/python scripts/compare_iteration_speed.py --ref 33d5193 --iterations 5 --rounds 2

Both sides load ``--config`` from their own checkout, so a preset that changed since ``--ref`` must be pinned with
overrides (``--new-override`` for settings the older commit does not have).

The older commit is checked out into a temporary git worktree; both sides run ``hiper train`` through their own
code (``PYTHONPATH`` points at the checkout, the same virtual environment serves both) with the same config, seed
and overrides: the SFT warm start (untimed; skip it with ``--no-sft``), then ``--warmup`` + ``--iterations`` RL
iterations, no evaluation, no checkpoints. Sides alternate for ``--rounds`` rounds so drifting machine load hits
both. ``time/iteration`` comes from each run's ``metrics.jsonl``. Prints one JSON line: per side the median and
minimum seconds per iteration and the per-phase medians it logged, and ``speedup`` = old median / new median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from hiper.trainer.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def side_overrides(args: argparse.Namespace, side: str) -> list[str]:
    """The ``hiper train`` overrides of one side (``"old"`` or ``"new"``): the timing setup, the shared overrides,
    then (new side only) ``--new-override`` ones, for settings the older commit does not know."""
    overrides = [f"trainer.total_iterations={args.warmup + args.iterations}", "trainer.eval_every=0",
                 "trainer.save_every=0", "trainer.logger=[jsonl]", f"seed={args.seed}", *args.overrides]
    if side == "new":
        overrides += args.new_overrides
    if not args.sft:
        overrides.append("sft.enabled=false")
    return overrides


def run_side(checkout: Path, out: Path, args: argparse.Namespace, side: str) -> list[dict]:
    """One ``hiper train`` run of ``checkout`` as ``side``; returns the timed iterations' metric rows."""
    overrides = side_overrides(args, side)
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, "-m", "hiper.cli", "train", "--config", args.config, "-o", str(out), *overrides]
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: hiper train failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    iters = [r for r in read_metrics(out / "metrics.jsonl") if "time/iteration" in r]
    return iters[args.warmup :]


def summary(rows: list[dict]) -> dict:
    phases = sorted({k for r in rows for k in r if k.startswith("time/")})
    its = [r["time/iteration"] for r in rows]
    return {"median_s": statistics.median(its), "min_s": min(its), "n": len(its),
            "phases_median_s": {k[5:]: statistics.median(r[k] for r in rows if k in r) for k in phases}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", required=True, help="the older commit (any git revision)")
    p.add_argument("--config", default="cpu_demo")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-sft", dest="sft", action="store_false", help="skip the SFT warm start on both sides")
    p.add_argument("--new-override", dest="new_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a dotted override for this checkout only (a setting the older commit does not have)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides for both sides")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hiper-speed-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.ref], check=True,
                       capture_output=True)
        try:
            sides: dict[str, list[dict]] = {"old": [], "new": []}
            for r in range(args.rounds):
                for name, checkout in (("old", old), ("new", ROOT)) if r % 2 == 0 else (("new", ROOT), ("old", old)):
                    sides[name] += run_side(checkout, Path(tmp) / f"{name}-{r}", args, name)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    result = {"ref": args.ref, "config": args.config, "overrides": args.overrides,
              "new_overrides": args.new_overrides, "sft": args.sft,
              "old": summary(sides["old"]), "new": summary(sides["new"])}
    result["speedup"] = result["old"]["median_s"] / result["new"]["median_s"]
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

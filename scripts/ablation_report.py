"""Tables for docs/results_ablation.md from a ``hiper compare`` folder: per arm the held-out success at the start and
the end, the episode's behaviour at the end (switch rate, segment length, invalid and inadmissible rates), the
training success and each critic head's explained variance over the last ``--last`` iterations, and, per seed, the
difference of every arm's gain to a reference arm's (paired: same seed, same tasks).

    python scripts/ablation_report.py runs/cmp --reference hae-compact

Prints markdown; reads ``results.json`` and each arm's ``metrics.jsonl`` (hiper.trainer.logging.read_metrics).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from hiper.diagnose import t975
from hiper.trainer.logging import read_metrics

BEHAVIOUR = ("eval/switch_rate", "eval/segment_length", "eval/invalid_rate", "eval/inadmissible_rate")


def _last_eval(rows: list[dict]) -> dict:
    evals = [r for r in rows if "eval/success" in r]
    return evals[-1] if evals else {}


def _train_means(rows: list[dict], last: int) -> tuple[float, str]:
    """Mean training success and per-head critic explained variance (median) over the last ``last`` iterations."""
    train = [r for r in rows if "train/success" in r][-last:]
    if not train:
        return math.nan, "-"
    heads = sorted({k for r in train for k in r if k.startswith("critic/explained_var_")})

    def median(key: str) -> float:  # of the defined values: a batch whose targets are all equal has none (null)
        xs = [r[key] for r in train if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return statistics.median(xs) if xs else math.nan

    ev = ", ".join(f"{k.rsplit('_', 1)[-1]} {median(k):.2f}" for k in heads)
    return statistics.fmean(r["train/success"] for r in train), ev or "- (no critic)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--reference", default="hae-compact", help="estimator-prompt of the reference arm")
    parser.add_argument("--last", type=int, default=5, help="training iterations the train-side means are taken over")
    args = parser.parse_args()
    result = json.loads((Path(args.folder) / "results.json").read_text())
    arms = [a for a in result["arms"] if a["status"] in ("ok", "skipped")]  # skipped: finished in an earlier run
    print("| arm | seed | start | end | gain | switch rate | segment length | invalid | inadmissible | "
          f"train success (last {args.last}) | critic explained variance per head (median, last {args.last}) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    gains: dict[str, dict[int, float]] = {}
    for a in sorted(arms, key=lambda a: (a["estimator"], a["prompt"], a["seed"])):
        curve = a["curve"]
        rows = read_metrics(Path(a["folder"]) / "metrics.jsonl")
        last = _last_eval(rows)
        train_success, ev = _train_means(rows, args.last)
        name = f"{a['estimator']}-{a['prompt']}"
        gains.setdefault(name, {})[a["seed"]] = curve[-1][1] - curve[0][1]
        cells = [f"{last.get(k, float('nan')):.3f}" for k in BEHAVIOUR]
        print(f"| {name} | {a['seed']} | {curve[0][1]:.3f} | {curve[-1][1]:.3f} | {curve[-1][1] - curve[0][1]:+.3f} | "
              + " | ".join(cells) + f" | {train_success:.3f} | {ev} |")
    print()
    ref = gains.get(args.reference, {})
    print(f"| arm | mean gain (points) | gain minus {args.reference}'s, per seed (points) | mean difference, 95 % t-interval |")
    print("|---|---|---|---|")
    for name, by_seed in sorted(gains.items()):
        mean_gain = 100 * statistics.mean(by_seed.values())
        diffs = [100 * (by_seed[s] - ref[s]) for s in sorted(by_seed) if s in ref]
        if name == args.reference or len(diffs) < 2:
            print(f"| {name} | {mean_gain:+.1f} | {', '.join(f'{d:+.1f}' for d in diffs) or '-'} | - |")
            continue
        m, sd = statistics.mean(diffs), statistics.stdev(diffs)
        half = t975(len(diffs)) * sd / math.sqrt(len(diffs))
        print(f"| {name} | {mean_gain:+.1f} | {', '.join(f'{d:+.1f}' for d in diffs)} | "
              f"{m:+.1f} [{m - half:+.1f}, {m + half:+.1f}] |")


if __name__ == "__main__":
    main()

"""The CPU demo: SFT warm start + HiPER RL (HAE) on the embedded household world, no downloads.

Everything is built in code: a byte-level BPE tokenizer trained on household-world text and the protocol tags
(:func:`hiper.models.tokenizer.household_tokenizer`), a tiny Qwen2 from a config, and a compact prompt
(:func:`hiper.protocol.compact_renderer`) that keeps CPU sequences short. The run config is the ``cpu_demo``
preset (``hiper/presets/cpu_demo.yaml``). :func:`run_demo` runs

1. SFT on 500 expert episodes, 3 epochs (held-out success of the SFT policy ~0.3-0.5, well below the ceiling),
2. held-out evaluation of the SFT-only policy,
3. HiPER RL iterations with periodic held-out evaluation,
4. the final held-out evaluation, a before/after table and a learning-curve PNG.

``hiper train`` with no config runs it; ``python -m hiper.trainer.demo --seed 1`` too. About 5 minutes on 2 quiet CPU
cores; measured results in ``docs/results_cpu_demo.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hiper.config import HiperConfig, load_config
from hiper.trainer.provenance import describe, machine_info
from hiper.trainer.trainer import Trainer


class _ConsoleLogger:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.quiet:
            return
        keys = ("train/success", "train/episode_length", "train/invalid_rate", "train/inadmissible_rate",
                "train/switch_rate", "eval/success", "critic/explained_var_low", "actor/entropy", "time/iteration",
                "sft/nll_after", "time/sft")
        shown = {k: metrics[k] for k in keys if k in metrics}
        if shown:
            print(f"[{step:3d}] " + "  ".join(f"{k.split('/', 1)[1]}={v:.3f}" for k, v in shown.items()), flush=True)


def plot_learning_curve(history: Sequence[Mapping[str, Any]], path: str, title: str = "HiPER CPU demo",
                        train_temperature: float = 1.0) -> str:
    """Write a PNG of training success (per iteration; rollouts sampled at ``train_temperature``) and held-out
    success (per evaluation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [h["iteration"] for h in history if "train/success" in h]
    tr = [h["train/success"] for h in history if "train/success" in h]
    ev_it = [h["iteration"] for h in history if "eval/success" in h]
    ev = [h["eval/success"] for h in history if "eval/success" in h]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(it, tr, color="tab:blue", alpha=0.6, label=f"train rollouts (T={train_temperature:g})")
    ax.plot(ev_it, ev, "o-", color="tab:red", label="held-out eval")
    ax.set_xlabel("RL iteration (0 = after SFT)")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(before: Mapping[str, Any], after: Mapping[str, Any], after_label: str = "SFT + HiPER RL") -> str:
    """Before/after held-out table: overall success, per task type, episode length, invalid rate."""
    rows = [("success (all)", "eval/success")]
    types = sorted({k.split("/", 2)[2] for k in list(before) + list(after) if k.startswith("eval/success/")})
    rows += [(f"  {t}", f"eval/success/{t}") for t in types]
    rows += [("episode length", "eval/episode_length"), ("invalid-format rate", "eval/invalid_rate"),
             ("switch rate", "eval/switch_rate"), ("inadmissible rate", "eval/inadmissible_rate")]
    w = max(16, len(after_label) + 2)  # a long estimator name widens the column instead of running into the next
    lines = [f"{'held-out (valid_seen)':<26}{'SFT only':>10}{after_label:>{w}}", "-" * (36 + w)]
    for name, key in rows:
        b, a = before.get(key, float("nan")), after.get(key, float("nan"))
        lines.append(f"{name:<26}{b:>10.3f}{a:>{w}.3f}")
    return "\n".join(lines)


def run_demo(config: HiperConfig, output_dir: str | None = None, quiet: bool = False, plot: bool = True,
             logger: Any = None, on_done: Callable[[Trainer], None] | None = None,
             samples: Callable[[list[dict[str, Any]]], Any] | None = None) -> dict[str, Any]:
    """Run the whole demo; returns ``{"before", "after", "history", "wall_s", "table", "png", "seed",
    "train_temperature", "machine"}`` (``machine``: :func:`hiper.trainer.provenance.machine_info`, since the
    figures depend on the CPU's float rounding).

    ``output_dir`` overrides ``config.output_dir``. Writes ``demo_result.json`` and ``learning_curve.png`` there.
    ``on_done(trainer)`` runs after training (``hiper train`` saves the final checkpoint with it).
    """
    t0 = time.perf_counter()
    out_dir = output_dir or config.output_dir
    os.makedirs(out_dir, exist_ok=True)
    trainer = Trainer(config, logger=logger or _ConsoleLogger(quiet), samples=samples)
    if on_done is not None:  # hiper train: keep checkpoints/best as held-out success improves
        trainer.callbacks.append(trainer.save_best)
    if not quiet:
        source = config.model.path or "tiny Qwen2 from a config"
        n_params = sum(p.numel() for p in trainer.policy.parameters())
        n_train = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
        trainable = "" if n_train == n_params else f" ({n_train / 1e6:.3f}M trainable)"
        print(
            f"policy: {source}, {n_params / 1e6:.2f}M parameters{trainable}, vocab {len(trainer.tokenizer)}",
            flush=True,
        )
    history = trainer.train()
    if on_done is not None:
        on_done(trainer)
    evals = [h for h in history if "eval/success" in h]
    if not evals:
        raise ValueError("run_demo needs held-out evaluations for its before/after table: set trainer.eval_every > 0")
    before, after = evals[0], evals[-1]
    wall = time.perf_counter() - t0
    estimator = config.algorithm.adv_estimator
    table = format_table(before, after, "SFT + HiPER RL" if estimator == "hae" else f"SFT + {estimator.upper()} RL")
    png = None
    if plot:
        png = plot_learning_curve(history, os.path.join(out_dir, "learning_curve.png"),
                                  train_temperature=config.rollout.temperature)
    result = {"before": before, "after": after, "history": history, "wall_s": wall, "table": table, "png": png,
              "seed": config.seed, "train_temperature": config.rollout.temperature, "machine": machine_info()}
    with open(os.path.join(out_dir, "demo_result.json"), "w") as f:
        json.dump({k: v for k, v in result.items() if k != "table"}, f, indent=1, default=float)
    if not quiet:
        print()
        print(table)
        print(f"\nwall time {wall:.0f} s; learning curve: {png}")
        print(f"measured on {describe(result['machine'])}: other CPUs give other figures for the same seed "
              "(docs/results_cpu_demo.md)")
    return result


def build_parser(exit_on_error: bool = True) -> argparse.ArgumentParser:
    """The arguments of ``python -m hiper.trainer.demo`` (the doc check parses the documented commands with it)."""
    p = argparse.ArgumentParser(prog="python -m hiper.trainer.demo", description="HiPER CPU demo",
                                exit_on_error=exit_on_error)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="runs/cpu_demo")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = [f"seed={args.seed}", f"output_dir={args.output_dir}"]
    if args.iterations is not None:
        overrides.append(f"trainer.total_iterations={args.iterations}")
    run_demo(load_config("cpu_demo", overrides), quiet=args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

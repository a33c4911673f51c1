"""``hiper train``: load + validate a config, save it, then run SFT warm start + RL with the trainer.

::

    hiper train                                        # the CPU demo (the cpu_demo preset)
    hiper train --config alfworld_qwen2.5_1.5b env.n_envs=64 algorithm.hae.keep_penalty=-0.5
    hiper train --config my.yaml --output-dir runs/x   # a user file (may start with ``base: <preset>``)
    hiper train --resume                               # continue from <output_dir>/checkpoints/latest
    hiper train --resume runs/x/checkpoints/iter_000010
    hiper train --print-config trainer.logger=[console]

With no ``--config`` (or ``--config cpu_demo``) and no ``--resume``, the run is the CPU demo of
:mod:`hiper.trainer.demo`: the same config, the before/after held-out table on stdout,
``learning_curve.png`` and ``demo_result.json`` in the output dir (plus ``config.yaml`` and the logger's
files). Overrides still apply (``hiper train trainer.total_iterations=4``).

A bad config prints one line (``hiper train: error: ...`` naming the key and the fix) and exits with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from hiper.config import (
    ConfigError,
    HiperConfig,
    config_to_yaml,
    list_presets,
    load_config,
    save_resolved,
)
from hiper.trainer import demo
from hiper.trainer.checkpoint import latest_checkpoint
from hiper.trainer.logging import MetricLogger, plot_learning_curve
from hiper.trainer.trainer import Trainer

EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130


def add_common_arguments(parser: argparse.ArgumentParser, resume: bool = True) -> None:
    """Arguments shared by ``hiper train`` and ``hiper sft``."""
    parser.add_argument(
        "--config", "-c", default=None, metavar="PRESET_OR_YAML",
        help=f"preset name or YAML file (default: cpu_demo). Presets: {', '.join(list_presets())}",
    )
    parser.add_argument("--output-dir", "-o", default=None, metavar="DIR", help="run folder (config key output_dir)")
    if resume:
        parser.add_argument(
            "--resume", nargs="?", const="auto", default=None, metavar="DIR",
            help="resume from a checkpoint folder; without DIR, from the latest checkpoint in the output dir",
        )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="dotted config overrides parsed as YAML values, e.g. actor.lr=1e-6 trainer.logger=[console,jsonl]",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, resume=True)


def resolve_config(args: argparse.Namespace, prog: str) -> HiperConfig | int:
    """Config from ``args`` (``--config``, ``--output-dir``, ``--resume``, overrides), or the exit code 2
    after printing the one-line error."""
    overrides = list(args.overrides or [])
    resume = getattr(args, "resume", None)
    if resume is not None and "=" in resume and not os.path.isdir(resume):
        # ``--resume key=value`` : argparse gave the first override to --resume
        overrides.insert(0, resume)
        resume = "auto"
    if args.output_dir is not None:
        overrides.append(f"output_dir={_quote(args.output_dir)}")
    if resume is not None:
        overrides.append(f"trainer.resume={_quote(resume)}")
    try:
        return load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def _quote(value: str) -> str:
    """A path as a YAML scalar that stays a string."""
    return "'" + value.replace("'", "''") + "'"


def make_logger(cfg: HiperConfig) -> Any:
    """The run's :class:`~hiper.trainer.logging.MetricLogger` from ``cfg.trainer``."""
    return MetricLogger(
        cfg.output_dir,
        backends=cfg.trainer.logger,
        run_name=cfg.trainer.experiment_name,
        project=cfg.trainer.project_name,
        config=cfg.to_dict(),
    )


def resume_path(cfg: HiperConfig) -> Path | None:
    """The checkpoint to resume from: ``trainer.resume`` as a folder, or the latest one for ``auto``."""
    if cfg.trainer.resume is None:
        return None
    if cfg.trainer.resume == "auto":
        return latest_checkpoint(cfg.output_dir)
    return Path(cfg.trainer.resume)


def run_training(cfg: HiperConfig, logger: Any, resume_from: Path | None) -> Any:
    """Hand the validated config to the trainer core: ``Trainer(cfg, logger=...)``, resume, ``train()``."""
    trainer = Trainer(cfg, logger=logger)
    if resume_from is not None:
        load = getattr(trainer, "load_checkpoint", None)
        if load is None:
            raise RuntimeError("this Trainer cannot resume from a checkpoint folder (no Trainer.load_checkpoint)")
        load(resume_from)
    return trainer.train()


def is_demo_run(args: argparse.Namespace, cfg: HiperConfig) -> bool:
    """True for the CPU demo: the default preset (no ``--config`` or ``cpu_demo``), a fresh (not resumed)
    run with held-out evaluations (``trainer.eval_every > 0``: the table needs a before and an after)."""
    return args.config in (None, "cpu_demo") and cfg.trainer.resume is None and cfg.trainer.eval_every > 0


def run_demo(cfg: HiperConfig, logger: Any) -> Any:
    """The CPU demo through :func:`hiper.trainer.demo.run_demo`: prints the before/after table, writes
    ``learning_curve.png`` and ``demo_result.json`` to ``cfg.output_dir``."""
    return demo.run_demo(cfg, logger=logger)


def plot_curve(cfg: HiperConfig) -> Path | None:
    """``<output_dir>/learning_curve.png`` from ``metrics.jsonl`` (None when there is nothing to plot)."""
    metrics = Path(cfg.output_dir) / "metrics.jsonl"
    if not metrics.is_file():
        return None
    try:
        return plot_learning_curve(metrics, Path(cfg.output_dir) / "learning_curve.png",
                                   keys=("train/success", "eval/success"), title=cfg.trainer.experiment_name)
    except (ValueError, ImportError):
        return None


def main(args: argparse.Namespace) -> int:
    cfg = resolve_config(args, "hiper train")
    if isinstance(cfg, int):
        return cfg
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    resume_from = resume_path(cfg)
    if cfg.trainer.resume == "auto" and resume_from is None:
        print(f"hiper train: no checkpoint in {cfg.output_dir}; starting fresh", file=sys.stderr)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out / "config.yaml")
    logger = make_logger(cfg)
    demo_run = is_demo_run(args, cfg)
    try:
        if demo_run:
            result = run_demo(cfg, logger)
        else:
            run_training(cfg, logger, resume_from)
    except KeyboardInterrupt:
        print("hiper train: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        logger.close()
    png = result.get("png") if demo_run else plot_curve(cfg)
    print(f"hiper train: done; run folder {out}" + (f", curve {png}" if png else ""))
    return 0

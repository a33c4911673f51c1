"""``hiper train``: load + validate a config, save it, then run SFT warm start + RL with the trainer.

::

    hiper train                                        # the CPU demo (the cpu_demo preset)
    hiper train --config alfworld_qwen2.5_1.5b env.n_envs=64 algorithm.hae.keep_penalty=-0.5
    hiper train --config my.yaml --output-dir runs/x   # a user file (may start with ``base: <preset>``)
    hiper train --resume runs/x                        # continue run x: its config.yaml, its folder, its metrics
    hiper train --resume runs/x/checkpoints/iter_000010 trainer.total_iterations=40   # overrides on top
    hiper train -o runs/x --overwrite                  # a fresh run into a folder that holds one
    hiper train --print-config trainer.logger=[console]

With no ``--config`` (or ``--config cpu_demo``) and no ``--resume``, the run is the CPU demo of
:mod:`hiper.trainer.demo`: the same config, the before/after held-out table on stdout,
``learning_curve.png`` and ``demo_result.json`` in the output dir (plus ``config.yaml`` and the logger's
files). Overrides still apply (``hiper train trainer.total_iterations=4``).

A bad config prints one line (``hiper train: error: ...`` naming the key and the fix) and exits with 2.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
from collections.abc import Callable
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
from hiper.losses import UpdatesDiverged
from hiper.trainer import checkpoint, demo
from hiper.trainer.checkpoint import latest_checkpoint
from hiper.trainer.logging import MetricLogger, plot_learning_curve, truncate_metrics
from hiper.trainer.samples import append_jsonl
from hiper.trainer.trainer import Trainer

EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_DIVERGED = 1
TRAJECTORIES = "trajectories.jsonl"


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
    parser.add_argument("--overwrite", action="store_true",
                        help="start a fresh run in a folder that already holds one (deletes its contents)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="dotted config overrides parsed as YAML values, e.g. actor.lr=1e-6 trainer.logger=[console,jsonl]",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, resume=True)


class UsageError(Exception):
    """A user error of ``hiper train`` / ``hiper sft``: printed as one line, exit status 2."""


def resolve_config(args: argparse.Namespace, prog: str) -> HiperConfig | int:
    """The run's config from ``args``, or the exit code 2 after printing the one-line error.

    A fresh run: ``--config`` (default cpu_demo) + overrides; ``-o DIR`` sets ``output_dir`` and, unless an override
    names one, ``trainer.experiment_name`` (the run is named after its folder). ``--resume RUN`` (a run folder or
    one of its checkpoints) continues RUN itself: RUN's saved ``config.yaml`` with the command line's overrides on
    top (reported on stderr), RUN's folder, its latest (or the given) checkpoint.
    """
    try:
        return _resolve(args, prog)
    except (ConfigError, UsageError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def _resolve(args: argparse.Namespace, prog: str) -> HiperConfig:
    overrides = list(args.overrides or [])
    resume = getattr(args, "resume", None)
    if resume is not None and "=" in resume and not os.path.isdir(resume):
        # ``--resume key=value`` : argparse gave the first override to --resume
        overrides.insert(0, resume)
        resume = "auto"
    if resume is not None and resume != "auto":
        return _resumed_config(Path(resume), overrides, args, prog)
    named = any(o.split("=", 1)[0].strip() == "trainer.experiment_name" for o in overrides)
    if args.output_dir is not None:
        overrides.append(f"output_dir={_quote(args.output_dir)}")
        if not named:
            overrides.append(f"trainer.experiment_name={_quote(Path(args.output_dir).name or 'run')}")
    if resume == "auto":
        out = Path(args.output_dir) if args.output_dir is not None else None
        folder = out if out is not None else Path(load_config(args.config, overrides, validate=False).output_dir)
        if latest_checkpoint(folder) is not None:
            return _resumed_config(folder, list(args.overrides or []), args, prog)
        print(f"{prog}: no checkpoint in {folder}; starting fresh", file=sys.stderr)
    return load_config(args.config, overrides)


def _resumed_config(path: Path, overrides: list[str], args: argparse.Namespace, prog: str) -> HiperConfig:
    """The config of the run that ``path`` (a run folder or a checkpoint folder) belongs to, resumed."""
    if (path / checkpoint.TRAINER_STATE).is_file():
        ckpt = path
        run = path.parent.parent if path.parent.name == checkpoint.CHECKPOINTS else path.parent
    elif path.is_dir():
        run, ckpt = path, latest_checkpoint(path)
        if ckpt is None:
            raise UsageError(f"--resume {path}: no checkpoint in that folder; start a fresh run with -o {path}")
    else:
        raise UsageError(f"--resume {path}: no such run or checkpoint folder")
    saved = run / "config.yaml"
    if not saved.is_file():
        saved = ckpt / checkpoint.CONFIG_FILE
    if not saved.is_file():
        raise UsageError(f"--resume {path}: the run has no config.yaml; pass --config with the run's settings")
    if args.config is not None:
        raise UsageError(f"--resume {path} continues that run with its own config.yaml: drop --config")
    if args.output_dir is not None and Path(args.output_dir).resolve() != run.resolve():
        raise UsageError(f"--resume {path} writes into its own folder {run}: drop -o {args.output_dir}")
    if overrides:
        print(f"{prog}: resuming {run} with overrides on top of its config: {' '.join(overrides)}", file=sys.stderr)
    return load_config(str(saved), [*overrides, f"output_dir={_quote(str(run))}", f"trainer.resume={_quote(str(ckpt))}"])


def prepare_run_dir(cfg: HiperConfig, overwrite: bool) -> Path:
    """The run folder, made ready: a fresh run needs an empty (or new) folder, or ``--overwrite`` (which deletes
    it first); a resumed run keeps its folder and drops metric rows logged after its checkpoint."""
    out = Path(cfg.output_dir)
    if cfg.trainer.resume is not None:
        step = checkpoint.load_checkpoint(cfg.trainer.resume)["iteration"]  # verifies the manifest
        truncate_metrics(out / "metrics.jsonl", int(step))
        truncate_metrics(out / TRAJECTORIES, int(step), key="iteration")
        return out
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out} already holds a run: continue it with --resume {out}, start over with "
                             "--overwrite, or pick another -o")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


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


def run_training(cfg: HiperConfig, logger: Any) -> Trainer:
    """``Trainer(cfg, logger=...)``, resumed from ``trainer.resume`` when set, trained, and its final checkpoint
    saved (whatever ``trainer.save_every`` says, so ``hiper eval --policy RUN`` and ``--resume RUN`` work)."""
    trainer = Trainer(cfg, logger=logger, callbacks=[], samples=sample_sink(cfg))
    trainer.callbacks.append(trainer.save_best)  # checkpoints/best follows eval/success
    if cfg.trainer.resume is not None:
        trainer.load_checkpoint(cfg.trainer.resume, verify=False)  # prepare_run_dir verified it
    trainer.train()
    save_final(trainer)
    return trainer


def sample_sink(cfg: HiperConfig) -> Callable[[list[dict[str, Any]]], int]:
    """Where ``hiper train`` puts the per-iteration trajectory samples: ``<output_dir>/trajectories.jsonl``."""
    return functools.partial(append_jsonl, Path(cfg.output_dir) / TRAJECTORIES)


def save_final(trainer: Trainer) -> None:
    """Save the run's last state unless the loop just did (``trainer.save_every`` divides the iteration count)."""
    every = trainer.config.trainer.save_every
    if not (every and trainer.iteration_count % every == 0 and trainer.iteration_count > 0):
        trainer.save_checkpoint()


def is_demo_run(args: argparse.Namespace, cfg: HiperConfig) -> bool:
    """True for the CPU demo: the default preset (no ``--config`` or ``cpu_demo``), a fresh (not resumed)
    run with held-out evaluations (``trainer.eval_every > 0``: the table needs a before and an after)."""
    return args.config in (None, "cpu_demo") and cfg.trainer.resume is None and cfg.trainer.eval_every > 0


def run_demo(cfg: HiperConfig, logger: Any) -> Any:
    """The CPU demo through :func:`hiper.trainer.demo.run_demo`: prints the before/after table, writes
    ``learning_curve.png``, ``demo_result.json`` and the final checkpoint to ``cfg.output_dir``."""
    return demo.run_demo(cfg, logger=logger, on_done=save_final, samples=sample_sink(cfg))


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
    try:
        out = prepare_run_dir(cfg, args.overwrite)
    except (UsageError, checkpoint.CheckpointCorrupt) as exc:
        print(f"hiper train: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    save_resolved(cfg, out / "config.yaml")
    logger = make_logger(cfg)
    demo_run = is_demo_run(args, cfg)
    try:
        if demo_run:
            result = run_demo(cfg, logger)
        else:
            run_training(cfg, logger)
    except KeyboardInterrupt:
        print("hiper train: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except checkpoint.CheckpointCorrupt as exc:
        print(f"hiper train: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except UpdatesDiverged as exc:
        print(f"hiper train: stopped: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    finally:
        logger.close()
    png = result.get("png") if demo_run else plot_curve(cfg)
    print(f"hiper train: done; run folder {out}" + (f", curve {png}" if png else ""))
    return 0

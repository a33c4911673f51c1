"""``hiper sft``: behaviour cloning on expert trajectories rendered in the protocol, then save the policy.

::

    hiper sft                                   # cpu_demo preset: household expert episodes, tiny model
    hiper sft --config my.yaml sft.episodes=256 sft.epochs=2 --output-dir runs/sft

Runs the SFT stage of the config regardless of ``sft.enabled`` and writes a checkpoint named ``sft``
(``<output_dir>/checkpoints/sft/policy/`` is a normal HF folder: continue with
``hiper train model.path=<that folder> model.tiny=null model.tokenizer=null sft.enabled=false``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hiper.config import HiperConfig, config_to_yaml, save_resolved
from hiper.losses import UpdatesDiverged
from hiper.trainer.checkpoint import save_checkpoint
from hiper.trainer.cli_train import (
    UsageError,
    add_common_arguments,
    make_logger,
    prepare_run_dir,
    resolve_config,
)
from hiper.trainer.trainer import Trainer

EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, resume=False)


def run_sft(cfg: HiperConfig, logger: Any) -> Path:
    """Build the trainer core's ``Trainer``, run its SFT stage, save the ``sft`` checkpoint; return its path."""
    trainer = Trainer(cfg, logger=logger)
    trainer.sft()
    return save_checkpoint(
        cfg.output_dir, iteration=0, models={"policy": trainer.policy}, tokenizer=trainer.tokenizer,
        config=cfg, name="sft", update_latest=False, keep=0,
    )


def main(args: argparse.Namespace) -> int:
    cfg = resolve_config(args, "hiper sft")
    if isinstance(cfg, int):
        return cfg
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    try:
        out = prepare_run_dir(cfg, args.overwrite)
    except UsageError as exc:
        print(f"hiper sft: error: {exc}", file=sys.stderr)
        return 2
    save_resolved(cfg, out / "config.yaml")
    logger = make_logger(cfg)
    try:
        path = run_sft(cfg, logger)
    except KeyboardInterrupt:
        print("hiper sft: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UpdatesDiverged as exc:
        print(f"hiper sft: stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        logger.close()
    print(f"hiper sft: done; policy saved to {path / 'policy'}")
    return 0

"""The ``hiper`` command.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
only the chosen module is imported, so ``hiper bench`` does not pay for the trainer's imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hiper import __version__

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hiper.trainer.cli_train", "train an agent (SFT warm start + RL); default: the CPU demo"),
    "sft": ("hiper.trainer.cli_sft", "behaviour cloning on expert trajectories rendered in the protocol"),
    "eval": (
        "hiper.evaluate",
        "evaluate a policy (checkpoint, expert, random, oracle) on a fixed task panel",
    ),
    "play": ("hiper.play", "type the model's part yourself, turn by turn"),
    "bench": ("hiper.bench", "benchmarks (advantage, env, rollout, iteration)"),
    "diagnose": ("hiper.diagnose", "diagnostics on one frozen policy: diagnose variance (advantage and gradient noise)"),
    "view": ("hiper.view", "trajectories and their credit as one self-contained HTML page"),
    "compare": ("hiper.compare", "a grid of arms (estimator x prompt x seed) on one budget, one results table"),
}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hiper", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"hiper {__version__}")
    p.add_argument(
        "command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items())
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1] or ["--help"])  # --help / --version exit here; a bad command exits 2
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"hiper {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())

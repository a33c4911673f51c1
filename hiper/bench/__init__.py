"""``hiper bench NAME``: benchmarks that print one JSON line with what they measured.

Each benchmark is a module ``hiper.bench.<name>`` exposing ``add_arguments(parser)`` and ``run(args) -> dict``.
"""

from __future__ import annotations

import argparse
import importlib
import json

BENCHMARKS: dict[str, str] = {
    "advantage": "hiper.bench.advantage",  # span/mask building + HAE vs the reference loop
    "alfworld": "hiper.bench.alfworld_env",  # ALFWorld env steps/s with 1 and 2 workers
    "webshop": "hiper.bench.webshop_env",  # WebShop env steps/s
    "household": "hiper.bench.household_env",  # embedded world steps/s
    "rollout": "hiper.bench.rollout",  # generation tokens/s: our vLLM engine and loop vs raw vLLM
    "generate": "hiper.bench.generate",  # generation tokens/s: HFEngine vs plain model.generate
    "iteration": "hiper.bench.iteration",  # a training iteration by phase, tokens/s, peak memory
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark to run")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark")


def main(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHMARKS[args.name])
    sub = argparse.ArgumentParser(prog=f"hiper bench {args.name}")
    module.add_arguments(sub)
    result = module.run(sub.parse_args(args.rest))
    print(json.dumps(result, sort_keys=True))
    return 0

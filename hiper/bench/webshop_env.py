"""``hiper bench webshop``: WebShop env throughput (steps/s) in one process.

Policies: ``random`` (a random-ish agent like the one the original was timed with: searches the
instruction or a random product title, then clicks random admissible actions, buying now and then)
and ``oracle`` (the expert). Prints one JSON line; the original env runs about 46 steps/s here.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from hiper.envs.webshop import WebShopEnv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=200, help="episodes to run")
    parser.add_argument("--max-steps", type=int, default=15, help="env max_steps")
    parser.add_argument("--policy", choices=["random", "oracle"], default="random")
    parser.add_argument("--split", default="all", help="task split (clean mode)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="WebShop data dir (default $HIPER_SHARED/data/webshop)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    env = WebShopEnv(max_steps=args.max_steps, data_dir=args.data_dir, seed=args.seed)
    build_s = time.perf_counter() - t0
    tasks = WebShopEnv.tasks(args.split, data_dir=args.data_dir)
    rng = random.Random(args.seed)
    titles = [p.title.lower().replace("[", " ").replace("]", " ") for p in env.catalogue.products]

    steps = episodes = wins = 0
    score_sum = 0.0
    t1 = time.perf_counter()
    for _ in range(args.episodes):
        _, info = env.reset(rng.choice(tasks))
        done = False
        while not done:
            if args.policy == "oracle":
                action = env.expert().action
            elif info["page"] == "index" or rng.random() < 0.05:
                query = info["task"] if rng.random() < 0.5 else rng.choice(titles)
                action = f"search[{query.lower().replace('[', ' ').replace(']', ' ')}]"
            else:
                clicks = [a for a in info["admissible"] if a.startswith("click[") and a != "click[search]"]
                if "click[buy now]" in clicks and rng.random() > 0.3:
                    clicks.remove("click[buy now]")
                action = rng.choice(clicks) if clicks else "click[back to search]"
            _, _, done, info = env.step(action)
            steps += 1
        episodes += 1
        wins += bool(info["won"])
        score_sum += info["score"]
    elapsed = time.perf_counter() - t1
    return {
        "bench": "webshop",
        "policy": args.policy,
        "episodes": episodes,
        "steps": steps,
        "seconds": round(elapsed, 3),
        "steps_per_s": round(steps / elapsed, 1) if elapsed > 0 else None,
        "env_build_s": round(build_s, 3),
        "success": round(wins / max(episodes, 1), 4),
        "mean_score": round(score_sum / max(episodes, 1), 4),
        "original_steps_per_s": 46,
    }

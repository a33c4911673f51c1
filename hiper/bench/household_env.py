"""``hiper bench household``: embedded-world speed (random policy steps/s, expert episodes/s).

With ``--expert-table`` it also runs the expert on ``--n`` tasks of every task type of every
preset (default 1000) and reports the solve rate and step statistics per (preset, type); the
table is printed to stderr as markdown and returned in the JSON line under ``expert_table``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

from hiper.envs.household import PRESETS, SPLITS, HouseholdEnv, canonical_split


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--difficulty", default="default", choices=sorted(PRESETS), help="preset for the speed runs"
    )
    parser.add_argument("--split", default="train")
    parser.add_argument(
        "--random-steps", type=int, default=50_000, help="env steps taken by the random policy"
    )
    parser.add_argument("--expert-episodes", type=int, default=1_000, help="episodes played by the expert")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expert-table", action="store_true", help="also run the expert solve-rate table")
    parser.add_argument("--n", type=int, default=1000, help="tasks per (preset, task type) in --expert-table")
    parser.add_argument(
        "--presets", default=",".join(PRESETS), help="comma-separated presets for --expert-table"
    )


def random_policy_speed(difficulty: str, split: str, n_steps: int, seed: int) -> dict[str, float]:
    """Steps/s of a uniform-random policy over admissible actions (resets included in the time)."""
    env = HouseholdEnv(difficulty=difficulty)
    tasks = HouseholdEnv.tasks(split, n=min(2000, SPLITS[canonical_split(split)]), seed=seed)
    rng = random.Random(seed)
    steps = resets = 0
    t0 = time.perf_counter()
    while steps < n_steps:
        _, info = env.reset(tasks[resets % len(tasks)])
        resets += 1
        done = False
        while not done and steps < n_steps:
            _, _, done, info = env.step(rng.choice(info["admissible"]))
            steps += 1
    dt = time.perf_counter() - t0
    return {
        "random_steps": steps,
        "random_resets": resets,
        "random_steps_per_s": steps / dt,
        "random_us_per_step": 1e6 * dt / steps,
    }


def run_expert(env: HouseholdEnv, task: Any) -> tuple[bool, int]:
    """Play the expert on ``task``; return (won, steps)."""
    env.reset(task)
    done = False
    info: dict[str, Any] = {}
    while not done:
        _, _, done, info = env.step(env.expert().action)
    return bool(info["won"]), int(info["step"])


def expert_speed(difficulty: str, split: str, n_episodes: int, seed: int) -> dict[str, float]:
    env = HouseholdEnv(difficulty=difficulty)
    tasks = HouseholdEnv.tasks(split, n=n_episodes, seed=seed)
    t0 = time.perf_counter()
    wins = steps = 0
    for task in tasks:
        won, n = run_expert(env, task)
        wins += won
        steps += n
    dt = time.perf_counter() - t0
    return {
        "expert_episodes": len(tasks),
        "expert_success": wins / len(tasks),
        "expert_mean_steps": steps / len(tasks),
        "expert_episodes_per_s": len(tasks) / dt,
        "expert_steps_per_s": steps / dt,
    }


def expert_table(presets: list[str], n: int, split: str, seed: int) -> list[dict[str, Any]]:
    """Expert solve rate and steps over ``n`` tasks of every task type of every preset."""
    rows = []
    for preset in presets:
        env = HouseholdEnv(difficulty=preset)
        for task_type in PRESETS[preset].task_types:
            lengths, wins = [], 0
            for task in HouseholdEnv.tasks(split, n=n, seed=seed, task_type=task_type, difficulty=preset):
                won, steps = run_expert(env, task)
                wins += won
                lengths.append(steps)
            lengths.sort()
            rows.append(
                {
                    "preset": preset,
                    "task_type": task_type,
                    "n": n,
                    "solved": wins / n,
                    "mean_steps": sum(lengths) / n,
                    "p95_steps": lengths[int(0.95 * (n - 1))],
                    "max_steps_used": lengths[-1],
                    "max_steps": env.max_steps,
                }
            )
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| preset | task type | tasks | expert solved | mean steps | p95 | max | horizon |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['preset']} | {r['task_type']} | {r['n']} | {100 * r['solved']:.1f}% | {r['mean_steps']:.1f} "
            f"| {r['p95_steps']} | {r['max_steps_used']} | {r['max_steps']} |"
        )
    return "\n".join(out)


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "household", "difficulty": args.difficulty, "split": args.split}
    result.update(random_policy_speed(args.difficulty, args.split, args.random_steps, args.seed))
    result.update(expert_speed(args.difficulty, args.split, args.expert_episodes, args.seed))
    if args.expert_table:
        t0 = time.perf_counter()
        rows = expert_table([p for p in args.presets.split(",") if p], args.n, args.split, args.seed)
        print(_markdown(rows), file=sys.stderr)
        result["expert_table"] = rows
        result["expert_table_all_solved"] = all(r["solved"] == 1.0 for r in rows)
        result["expert_table_seconds"] = time.perf_counter() - t0
    return result

"""``hiper bench alfworld``: ALFWorld env throughput in an EnvPool with 1 and 2 (or more) workers.

For each worker count: reset ``--slots`` games of ``--split`` (timed separately: game loading is the
slow part of ALFWorld), then step every active slot ``--steps`` times with random admissible actions
(seeded, identical for every worker count) and report env steps/s, resets/s and the speedup over the
first worker count. The machine's load average is reported too: other processes sharing the CPU
lower the speedup.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import time
from typing import Any

from hiper.envs import env_class, make_env
from hiper.envs.alfworld import AlfWorldEnv
from hiper.envs.data import alfworld_json_dir
from hiper.envs.pool import EnvPool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--slots", type=int, default=8, help="games run at once")
    parser.add_argument("--steps", type=int, default=8, help="batch steps per measurement")
    parser.add_argument("--split", default="valid_unseen")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-expert-plan", action="store_true", help="do not compute policy_commands each step")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--memory-episodes",
        type=int,
        default=0,
        help="instead of throughput: run this many expert episodes and report worker RSS as they go",
    )
    parser.add_argument("--env", default="alfworld", help="env for --memory-episodes (alfworld or household)")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_pool_rss(
    env: str, n_episodes: int, n_workers: int = 2, n_slots: int = 8, split: str = "valid_unseen", **env_kwargs: Any
) -> dict[str, Any]:
    """Run ``n_episodes`` expert episodes of ``env`` in an EnvPool; sample worker RSS (MiB) after each wave.

    Episodes cycle over the split's tasks, ``n_slots`` at a time. Returns the samples
    ``[(episodes_done, [rss per worker])]`` and the growth from the first full wave to the end.
    """
    tasks = env_class(env).tasks(split)
    factory = functools.partial(make_env, env, **env_kwargs)
    samples: list[tuple[int, list[float]]] = []
    done_episodes, won = 0, 0
    t0 = time.perf_counter()
    with EnvPool(factory, n_workers=n_workers, timeout_s=600.0) as pool:
        while done_episodes < n_episodes:
            k = min(n_slots, n_episodes - done_episodes)
            wave = [tasks[(done_episodes + i) % len(tasks)] for i in range(k)]
            pool.reset(wave)
            active = set(range(k))
            while active:
                plans = pool.expert(sorted(active))
                for slot, res in pool.step({s: plans[s].action for s in sorted(active)}).items():
                    if res.done:
                        active.discard(slot)
                        won += bool(res.info["won"])
            done_episodes += k
            samples.append((done_episodes, [round(_rss_mib(pid), 1) for pid in pool.worker_pids()]))
    first, last = samples[0][1], samples[-1][1]
    return {
        "bench": "pool_rss",
        "env": env,
        "episodes": done_episodes,
        "won": won,
        "n_workers": n_workers,
        "n_slots": n_slots,
        "seconds": round(time.perf_counter() - t0, 1),
        "rss_mib_first_wave": first,
        "rss_mib_end": last,
        "rss_mib_max": [max(s[1][w] for s in samples) for w in range(len(first))],
        "rss_growth_mib": [round(b - a, 1) for a, b in zip(first, last)],
        "samples": samples[:: max(1, len(samples) // 20)] + ([samples[-1]] if len(samples) > 20 else []),
    }


def _measure(n_workers: int, args: argparse.Namespace, data_dir: Any) -> dict[str, float]:
    tasks = AlfWorldEnv.tasks(args.split, n=args.slots, seed=args.seed)
    factory = functools.partial(AlfWorldEnv, data_dir=data_dir, expert_plan=not args.no_expert_plan)
    rng = random.Random(args.seed)
    with EnvPool(factory, n_workers=n_workers, timeout_s=600.0) as pool:
        pool.reset(tasks[:n_workers])  # start-up: spawn + imports, not measured
        t0 = time.perf_counter()
        first = pool.reset(tasks)
        reset_s = time.perf_counter() - t0
        admissible = {slot: info["admissible"] for slot, (_, info) in enumerate(first)}
        active = set(admissible)
        n_steps, step_s = 0, 0.0
        for _ in range(args.steps):
            if not active:
                break
            actions = {s: rng.choice(sorted(admissible[s])) for s in sorted(active)}
            t0 = time.perf_counter()
            results = pool.step(actions)
            step_s += time.perf_counter() - t0
            n_steps += len(actions)
            for slot, res in results.items():
                admissible[slot] = res.info["admissible"]
                if res.done:
                    active.discard(slot)
    return {
        "steps_per_s": n_steps / step_s if step_s else 0.0,
        "resets_per_s": len(tasks) / reset_s if reset_s else 0.0,
        "n_steps": n_steps,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.memory_episodes:
        kwargs: dict[str, Any] = {}
        if args.env == "alfworld":
            kwargs["data_dir"] = alfworld_json_dir(args.data_dir)
        return measure_pool_rss(args.env, args.memory_episodes, n_workers=max(args.workers), n_slots=args.slots,
                                split=args.split, **kwargs)
    data_dir = alfworld_json_dir(args.data_dir)  # resolve/unpack once, outside the timings
    load_before = os.getloadavg()[0]
    per: dict[int, dict[str, float]] = {}
    for w in args.workers:
        per[w] = _measure(w, args, data_dir)
    base = per[args.workers[0]]
    out: dict[str, Any] = {
        "bench": "alfworld",
        "split": args.split,
        "slots": args.slots,
        "expert_plan": not args.no_expert_plan,
        "cpu_count": os.cpu_count(),
        "loadavg_before": round(load_before, 2),
        "loadavg_after": round(os.getloadavg()[0], 2),
    }
    for w, m in per.items():
        out[f"steps_per_s_{w}w"] = round(m["steps_per_s"], 2)
        out[f"resets_per_s_{w}w"] = round(m["resets_per_s"], 3)
        out[f"step_speedup_{w}w"] = round(m["steps_per_s"] / base["steps_per_s"], 2) if base["steps_per_s"] else None
        out[f"reset_speedup_{w}w"] = round(m["resets_per_s"] / base["resets_per_s"], 2) if base["resets_per_s"] else None
    return out

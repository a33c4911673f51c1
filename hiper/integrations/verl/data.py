"""Task datasets for verl: one parquet row per task of a hiper env panel (``python -m hiper.integrations.verl.data``).

verl's ``RLHFDataset`` needs a chat ``prompt`` column; the agent loop renders the real prompt each turn from the
env, so the column only holds a one-line stub naming the task. ``agent_name`` selects the hiper agent loop per
row and ``extra_info`` addresses the task (``{env, split, index, seed}``). Every row of a panel is a distinct
task; ``actor_rollout_ref.rollout.n`` sessions are run per row (the group of GRPO / GiGPO / HAE statistics).

    python -m hiper.integrations.verl.data --env household --split train --n 2048 --out ~/data/hiper/household_train.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hiper.envs import task_panel
from hiper.integrations.verl.agent_loop import AGENT_NAME


def task_rows(
    env: str, split: str, n: int | None = None, seed: int = 0, **panel_kwargs: Any
) -> list[dict[str, Any]]:
    """One verl dataset row per task of ``task_panel(env, split, n, seed)`` (pure Python)."""
    rows = []
    for i, task in enumerate(task_panel(env, split, n=n, seed=seed, **panel_kwargs)):
        rows.append(
            {
                "data_source": f"hiper/{env}",
                "prompt": [{"role": "user", "content": f"hiper task {task}"}],
                "agent_name": AGENT_NAME,
                "ability": "agent",
                "reward_model": {"style": "rule", "ground_truth": ""},
                "extra_info": {
                    "env": task.env,
                    "split": task.split,
                    "index": int(task.index),
                    "seed": int(task.seed),
                    "task": str(task),
                    "row": i,
                },  # fmt: skip
            }
        )
    return rows


def write_parquet(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write rows with pandas + pyarrow (both verl dependencies)."""
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - verl environments have pandas
        raise ImportError("writing the verl dataset needs pandas and pyarrow (installed with verl)") from exc
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="write a verl task dataset for a hiper env")
    ap.add_argument("--env", default="household")
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=None, help="first N tasks of the panel (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = task_rows(args.env, args.split, n=args.n, seed=args.seed)
    print(f"wrote {len(rows)} tasks to {write_parquet(rows, args.out)}")


if __name__ == "__main__":  # pragma: no cover
    main()

"""Trajectory samples with their credit, for ``hiper view``: one JSON object per episode, per line.

An episode record holds what a researcher needs to see where the credit went: per turn the observation, prompt and
response, the parse (decision, switch flag, subgoal, validity), the segment it belongs to, the reward and shaping
terms, the critic's values and targets, the per-role advantages (raw) and, per response token, its text, its role
(switch / subgoal / action) and the advantage it was trained with (after whitening). Evaluation episodes
(``hiper eval --out``) carry the texts and parse only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from hiper.rollout.records import Trajectory, TurnRecord
from hiper.trainer.algorithm import IterationResult

ROLES = ("switch", "subgoal", "action")
FORMAT = 1


def _turn(rec: TurnRecord, segment: int) -> dict[str, Any]:
    p = rec.parsed
    return {
        "turn": rec.turn, "observation": rec.observation, "prompt": rec.prompt, "response": rec.response,
        "decision": p.decision.value, "switch": rec.switch, "subgoal": rec.subgoal,
        "current_subgoal": rec.current_subgoal, "keep_inconsistent": rec.keep_inconsistent, "valid": rec.valid,
        "errors": list(p.errors), "action": rec.action, "reward": rec.reward, "done": rec.done,
        "truncated": rec.truncated, "truncation_reason": rec.truncation_reason, "segment": segment,
    }


def episode_record(traj: Trajectory, *, source: str, iteration: int, env: str) -> dict[str, Any]:
    """The episode's texts, parse and segments (a segment starts at turn 0 and at every turn with the flag)."""
    turns, segment = [], -1
    for rec in traj.turns:
        segment += 1 if (rec.turn == 0 or rec.switch) else 0
        turns.append(_turn(rec, segment))
    return {"format": FORMAT, "source": source, "iteration": iteration, "env": env, "task": str(traj.task),
            "task_type": traj.task_type, "won": traj.won, "score": traj.score, "length": traj.length,
            "n_segments": segment + 1, "turns": turns}


def _first(x: Tensor, row: int) -> float:
    """Row ``row`` of a per-row tensor ``[N]``, or its first column for a per-token one ``[N, L]``."""
    v = x[row]
    return float(v if v.dim() == 0 else v[0])


def iteration_records(result: IterationResult, tokenizer: Any, *, n: int, iteration: int, env: str,
                      seed: int) -> list[dict[str, Any]]:
    """``n`` episodes of an iteration (a seeded sample) with their values, advantages and token credit."""
    trajs = result.trajectories
    picked = sorted(random.Random(seed).sample(range(len(trajs)), min(n, len(trajs))))
    batch, scores, targets = result.batch, result.scores, result.targets
    rows: dict[tuple[int, int], int] = {(int(i), int(t)): r for r, (i, t) in
                                        enumerate(zip(batch.traj_index.tolist(), batch.turn_index.tolist()))}
    out = []
    for i in picked:
        record = episode_record(trajs[i], source="train", iteration=iteration, env=env)
        for turn in record["turns"]:
            r = rows[(i, turn["turn"])]
            mask = batch.response_mask[r]
            ids = batch.response_ids[r][mask].tolist()
            roles = [next((role for role in ROLES if bool(getattr(batch, f"{role}_mask")[r, j])), "")
                     for j in range(len(ids))]
            turn.update({
                # a per-token head ([N, L]) is shown by its value / target before the first response token
                "values": {h: _first(v, r) for h, v in scores.values.items()},
                "returns": {h: _first(v, r) for h, v in targets.returns.items()
                            if bool(_first(targets.value_mask[h], r))},
                "advantages": {role: float(v[r]) for role, v in targets.turn_advantages.items()},
                "shaping": {k: float(v[r]) for k, v in targets.shaping.items()},
                "beta": None if scores.beta is None else float(scores.beta[r]),
                "tokens": [tokenizer.decode([t]) for t in ids], "roles": roles,
                "token_advantages": [round(float(a), 5) for a in targets.advantages[r][mask].tolist()],
                "in_loss": [bool(x) for x in targets.loss_mask[r][mask].tolist()],
            })  # fmt: skip
        out.append(record)
    return out


def append_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Append records to a JSONL file (created with its folder); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, allow_nan=True) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Episode records of a JSONL file; a line that is not an episode record raises ``ValueError`` naming it."""
    out = []
    for k, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{k} is not JSON ({exc})") from None
        if not isinstance(rec, dict) or "turns" not in rec:
            raise ValueError(f"{path}:{k} is not an episode record (no 'turns'); write them with hiper train / eval")
        out.append(rec)
    return out


def eval_records(trajs: Sequence[Trajectory], env: str) -> list[dict[str, Any]]:
    """Evaluation episodes (texts, parse, segments; no credit)."""
    return [episode_record(t, source="eval", iteration=-1, env=env) for t in trajs]


__all__ = ["FORMAT", "ROLES", "append_jsonl", "episode_record", "eval_records", "iteration_records", "read_jsonl"]

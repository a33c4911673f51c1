"""verl turn rows <-> the hiper turn-batch layout (:class:`hiper.batch.TurnBatch`). No verl import.

On verl (v1 trainer + TransferQueue) every turn of every session is one row, stored under the key
``"{uid}_{session_id}_{index}"`` (uid = dataset prompt, session = the i-th of ``rollout.n`` rollouts, index
= turn). The agent loop (:mod:`hiper.integrations.verl.agent_loop`) parses each response **once** and ships
the turn's metadata in ``extra_fields`` (:func:`turn_extra_fields`); this module turns a bag of such rows,
in any order and possibly with verl's synthetic padding rows, into a :class:`TurnBatch` whose
``traj_index``/``turn_index`` place every row in the padded ``[n_traj, T_max]`` layout of
:mod:`hiper.advantage`, and back.

``extra_fields`` keys written per row (JSON-friendly scalars and small lists):

=====================  =======================================================================================
``turn_idx``           turn index within the session (must equal the key's ``index``)
``turn_reward``        env reward of this turn, unscaled. verl copies the *final* row's ``reward_score`` into
                       every row's ``rm_scores``, so per-turn rewards must travel here.
``done``/``truncated`` the episode ended at this turn / it was cut (step limit, env error)
``valid``              response well formed (protocol); ``keep_inconsistent``: KEEP with a changed subgoal
``switch``             the switch flag q_t (a new segment starts here); ``decision``: ``KEEP|SWITCH|INVALID``
``masks``              token runs ``{"switch"|"subgoal"|"action": [[start, end), ...]}`` of the role masks
``v_low_pos``          response position where V_low is read (after ``</subgoal>``); V_high/V_term read at 0
``state_key``          GiGPO anchor state (observation text); ``task_type``, ``won``, ``score``, ``task``
=====================  =======================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hiper.advantage.layout import turn_mask_from_index
from hiper.batch import TurnBatch, pad_token_lists

ROLES = ("switch", "subgoal", "action")
#: extra_fields keys every hiper turn row carries (checked by :func:`rows_to_turn_batch`).
TURN_KEYS = (
    "turn_idx", "turn_reward", "done", "truncated", "valid", "keep_inconsistent", "switch", "masks", "v_low_pos",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# masks <-> runs


def mask_to_runs(mask: Tensor) -> list[list[int]]:
    """Half-open ``[start, end)`` runs of True in a 1-D bool mask (vectorised; exact inverse of :func:`runs_to_mask`)."""
    m = mask.detach().to(torch.int8).flatten().cpu()
    if m.numel() == 0:
        return []
    edges = torch.diff(torch.cat([torch.zeros(1, dtype=torch.int8), m, torch.zeros(1, dtype=torch.int8)]))
    starts = (edges == 1).nonzero().flatten().tolist()
    ends = (edges == -1).nonzero().flatten().tolist()
    return [[s, e] for s, e in zip(starts, ends)]


def runs_to_mask(runs: Sequence[Sequence[int]], length: int) -> Tensor:
    """Bool ``[length]`` mask from ``[start, end)`` runs; raises on a run outside ``[0, length]``."""
    out = torch.zeros(length, dtype=torch.bool)
    for run in runs:
        start, end = int(run[0]), int(run[1])
        if not 0 <= start <= end <= length:
            raise ValueError(f"mask run [{start}, {end}) outside a response of {length} tokens")
        out[start:end] = True
    return out


# ---------------------------------------------------------------------------------------------------------------
# keys


def parse_row_key(key: str) -> tuple[str, int, int]:
    """``"{uid}_{session}_{index}"`` -> ``(uid, session, index)`` (uid may itself contain ``_``)."""
    parts = str(key).rsplit("_", 2)
    if len(parts) != 3:
        raise ValueError(f"row key {key!r} is not '{{uid}}_{{session_id}}_{{index}}'")
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"row key {key!r}: session and index must be integers") from None


def row_key(uid: str, session: int, index: int) -> str:
    """The TransferQueue key verl's ``AgentLoopWorkerTQ`` writes for turn ``index`` of session ``session``."""
    return f"{uid}_{int(session)}_{int(index)}"


# ---------------------------------------------------------------------------------------------------------------
# agent-loop side: one turn -> extra_fields


def turn_extra_fields(record: Any, spans: Any, row: int = 0) -> dict[str, Any]:
    """The ``extra_fields`` of one turn row from a manager :class:`~hiper.rollout.records.TurnRecord` and row ``row``
    of a :class:`~hiper.protocol.spans.SpanBatch` (the token-level parse of the generated ids).

    ``switch``/``valid`` come from the token-level parse (what the trainer would compute from the ids); the
    env saw the text parse of the same ids, so they agree for every response whose text decodes cleanly.
    """
    parsed = spans.parsed[row]
    masks = {role: mask_to_runs(getattr(spans, f"{role}_mask")[row]) for role in ROLES}
    return {
        "turn_idx": int(record.turn),
        "turn_reward": float(record.reward),
        "done": bool(record.done),
        "truncated": bool(record.truncated),
        "truncation_reason": record.truncation_reason,
        "valid": bool(parsed.valid),
        "keep_inconsistent": bool(record.keep_inconsistent),
        "switch": bool(parsed.switch),
        "decision": str(parsed.decision.value),
        "masks": masks,
        "v_low_pos": int(spans.v_low_pos[row]),
        "action_fallback": bool(spans.action_fallback[row]),
        "state_key": str(record.state_key),
        "task_type": str(record.task_type),
        "won": bool(record.won),
        "score": float(record.score),
        "task": str(record.task),
        "action": str(record.action),
        "subgoal": record.subgoal,
    }


# ---------------------------------------------------------------------------------------------------------------
# rows


@dataclass
class VerlRows:
    """A bag of verl turn rows, unpadded (TransferQueue stores them jagged), in verl's row order.

    Attributes:
        keys: ``"{uid}_{session}_{index}"`` per row.
        prompt_ids / response_ids: token ids per row (no padding).
        extra_fields: per row, the dict written by the agent loop (see the module docstring).
        values: optional critic output per row read at response positions: ``[L_i]`` (verl's single value
            head: ``values[j]`` = value after consuming response tokens ``< j``) or ``[L_i, 3]`` (channels
            low, high, term of a three-head critic).
        is_padding: verl's synthetic padding rows (``tag["is_padding"]``); they get zero advantage and no loss.
    """

    keys: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    extra_fields: list[dict[str, Any]]
    values: list[Tensor] | None = None
    is_padding: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.keys)
        if not self.is_padding:
            self.is_padding = [False] * n
        for name in ("prompt_ids", "response_ids", "extra_fields", "is_padding"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"VerlRows.{name} has {len(getattr(self, name))} rows, keys has {n}")
        if self.values is not None and len(self.values) != n:
            raise ValueError(f"VerlRows.values has {len(self.values)} rows, keys has {n}")

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class RowIndex:
    """Where each verl row went in the :class:`TurnBatch`.

    ``batch_row[r]``: row of the turn batch holding verl row ``r`` (-1 for padding rows);
    ``verl_row[b]``: the inverse for batch rows. ``traj_keys``: ``(uid, session)`` of each trajectory.
    """

    batch_row: Tensor
    verl_row: Tensor
    traj_keys: list[tuple[str, int]]
    uids: list[str]


def rows_to_turn_batch(rows: VerlRows, pad_token_id: int = 0) -> tuple[TurnBatch, RowIndex]:
    """Build a :class:`~hiper.batch.TurnBatch` from verl turn rows (any order; padding rows dropped).

    Trajectories are the distinct ``(uid, session)`` pairs, sorted; turns are the key indices and must be
    ``0 .. T_i - 1`` with no gap or duplicate (``ValueError`` otherwise: a lost row would silently shift the
    bootstrap). ``group`` is the uid (``rollout.n`` sessions of one prompt form a group). The batch rows are
    ordered by (trajectory, turn), so the result does not depend on verl's row order (``_balance_batch``).
    """
    real = [r for r in range(len(rows)) if not rows.is_padding[r]]
    if not real:
        raise ValueError("no non-padding rows to convert")
    parsed = {r: parse_row_key(rows.keys[r]) for r in real}
    for r in real:
        ef = rows.extra_fields[r]
        missing = [k for k in TURN_KEYS if k not in ef]
        if missing:
            raise ValueError(
                f"row {rows.keys[r]!r} lacks extra_fields {missing}; was it produced by the hiper agent loop "
                "(actor_rollout_ref.rollout.agent.default_agent_loop=hiper_plan_execute)?"
            )
        if int(ef["turn_idx"]) != parsed[r][2]:
            raise ValueError(f"row {rows.keys[r]!r}: extra_fields turn_idx={ef['turn_idx']} != key index")
    traj_keys = sorted({(u, s) for u, s, _ in parsed.values()})
    traj_of = {k: i for i, k in enumerate(traj_keys)}
    uids = sorted({u for u, _ in traj_keys})
    uid_of = {u: i for i, u in enumerate(uids)}
    order = sorted(real, key=lambda r: (traj_of[parsed[r][:2]], parsed[r][2]))
    n = len(order)
    traj_index = torch.tensor([traj_of[parsed[r][:2]] for r in order], dtype=torch.long)
    turn_index = torch.tensor([parsed[r][2] for r in order], dtype=torch.long)
    t_max = int(turn_index.max()) + 1
    turn_mask_from_index(traj_index, turn_index, len(traj_keys), t_max)  # raises on gaps / duplicates

    prompt_ids, prompt_mask = pad_token_lists([rows.prompt_ids[r] for r in order], pad_token_id, left=True)
    resp = [rows.response_ids[r] for r in order]
    response_ids, response_mask = pad_token_lists(resp, pad_token_id)
    width = response_ids.shape[1]
    efs = [rows.extra_fields[r] for r in order]
    role_masks = {
        role: torch.stack([runs_to_mask(ef["masks"].get(role, []), width) for ef in efs]) for role in ROLES
    }
    for role, m in role_masks.items():
        if bool((m & ~response_mask).any()):
            raise ValueError(f"{role} mask runs extend past the response in some row")

    def col(key: str, dtype: torch.dtype) -> Tensor:
        return torch.tensor([ef[key] for ef in efs], dtype=dtype)

    done, truncated = col("done", torch.bool), col("truncated", torch.bool)
    v_low_pos = col("v_low_pos", torch.long)
    lengths = response_mask.sum(1)
    if bool((v_low_pos < 0).any()) or bool((v_low_pos >= torch.clamp(lengths, min=1)).any()):
        raise ValueError("v_low_pos outside the response in some row")
    group_of_traj = torch.tensor([uid_of[u] for u, _ in traj_keys], dtype=torch.long)
    batch = TurnBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        action_mask=role_masks["action"],
        subgoal_mask=role_masks["subgoal"],
        switch_mask=role_masks["switch"],
        v_low_pos=v_low_pos,
        v_high_pos=torch.zeros(n, dtype=torch.long),
        traj_index=traj_index,
        turn_index=turn_index,
        rewards=col("turn_reward", torch.float32),
        dones=done & ~truncated,
        truncated=truncated,
        valid=col("valid", torch.bool),
        keep_inconsistent=col("keep_inconsistent", torch.bool),
        switch=col("switch", torch.bool),
        group=group_of_traj,
        n_traj=len(traj_keys),
        t_max=t_max,
        state_keys=[str(ef.get("state_key", "")) for ef in efs],
        task_types=[str(ef.get("task_type", "")) for ef in efs],
    )
    batch_row = torch.full((len(rows),), -1, dtype=torch.long)
    batch_row[torch.tensor(order, dtype=torch.long)] = torch.arange(n)
    return batch, RowIndex(batch_row, torch.tensor(order, dtype=torch.long), traj_keys, uids)


def turn_batch_to_rows(
    batch: Any,
    traj_keys: Sequence[tuple[str, int]] | None = None,
    extras: Sequence[Mapping[str, Any]] | None = None,
) -> VerlRows:
    """The verl rows of a :class:`TurnBatch` (batch row order), inverse of :func:`rows_to_turn_batch`.

    ``traj_keys``: ``(uid, session)`` per trajectory; default ``("g{group}", k)`` with ``k`` the trajectory's
    rank within its group. ``extras``: per-row dicts merged into ``extra_fields`` (task, won, score ...).
    """
    if traj_keys is None:
        seen: dict[int, int] = {}
        traj_keys = []
        for g in batch.group.tolist():
            traj_keys.append((f"g{g}", seen.get(g, 0)))
            seen[g] = seen.get(g, 0) + 1
    if len(traj_keys) != batch.n_traj:
        raise ValueError(f"{len(traj_keys)} trajectory keys for {batch.n_traj} trajectories")
    keys, prompts, responses, efs = [], [], [], []
    for b in range(len(batch)):
        t, turn = int(batch.traj_index[b]), int(batch.turn_index[b])
        uid, session = traj_keys[t]
        keys.append(row_key(uid, session, turn))
        prompts.append(batch.prompt_ids[b][batch.prompt_mask[b]].tolist())
        n_resp = int(batch.response_mask[b].sum())
        responses.append(batch.response_ids[b, :n_resp].tolist())
        ef: dict[str, Any] = {
            "turn_idx": turn,
            "turn_reward": float(batch.rewards[b]),
            "done": bool(batch.dones[b] or batch.truncated[b]),
            "truncated": bool(batch.truncated[b]),
            "valid": bool(batch.valid[b]),
            "keep_inconsistent": bool(batch.keep_inconsistent[b]),
            "switch": bool(batch.switch[b]),
            "masks": {role: mask_to_runs(getattr(batch, f"{role}_mask")[b]) for role in ROLES},
            "v_low_pos": int(batch.v_low_pos[b]),
            "state_key": batch.state_keys[b] if batch.state_keys else "",
            "task_type": batch.task_types[b] if batch.task_types else "",
        }
        if extras is not None:
            ef.update(extras[b])
        efs.append(ef)
    return VerlRows(keys=keys, prompt_ids=prompts, response_ids=responses, extra_fields=efs)


def _to_list(x: Any) -> list[Any]:
    """Per-row items of a (nested/jagged or padded) tensor, a NonTensorStack, or a list."""
    if isinstance(x, Tensor):
        return list(x.unbind(0))
    if hasattr(x, "tolist"):
        return list(x.tolist())
    return list(x)


def rows_from_tensordict(
    data: Mapping[str, Any], keys: Sequence[str], tags: Sequence[Mapping[str, Any]] | None = None
) -> VerlRows:
    """:class:`VerlRows` from what ``tq.kv_batch_get`` returns (fields ``prompts``, ``responses``,
    ``response_mask``, ``extra_fields`` and optionally ``values``; tensors may be jagged nested tensors).

    A row is padding when its tag says ``is_padding`` or its key's uid starts with ``pad`` (verl's
    ``upsample_batch_to_divisible_size`` copies row 0's ``extra_fields`` into its padding rows, so they must not
    be read as turns).
    """
    n = len(keys)
    prompt_t, response_t = data["prompts"], data["responses"]
    responses = [r.tolist() for r in _to_list(response_t)]
    if isinstance(response_t, Tensor) and not response_t.is_nested:
        # padded layout (left-padded prompts, right-padded responses): keep the attended tokens only
        masks = [m.bool() for m in _to_list(data["response_mask"])]
        responses = [r[: int(m.sum())] for r, m in zip(responses, masks)]
        pmask = data.get("prompt_mask") if hasattr(data, "get") else None
        prompts = [p[pm.bool()].tolist() for p, pm in zip(prompt_t, pmask)] if pmask is not None else None
    else:
        prompts = None
    if prompts is None:
        prompts = [p.tolist() for p in _to_list(prompt_t)]
    efs = [dict(e) if isinstance(e, Mapping) else {} for e in _to_list(data["extra_fields"])]
    values = None
    if "values" in data and data["values"] is not None:
        values = [v.float() for v in _to_list(data["values"])]
        values = [v[: len(r)] for v, r in zip(values, responses)]
    is_padding = [
        bool((tags[i] if tags is not None else {}).get("is_padding", False))
        or parse_row_key(keys[i])[0].startswith("pad")
        for i in range(n)
    ]
    return VerlRows(list(keys), prompts, responses, efs, values, is_padding)


__all__ = [
    "ROLES",
    "TURN_KEYS",
    "RowIndex",
    "VerlRows",
    "mask_to_runs",
    "parse_row_key",
    "row_key",
    "rows_from_tensordict",
    "rows_to_turn_batch",
    "runs_to_mask",
    "turn_batch_to_rows",
    "turn_extra_fields",
]

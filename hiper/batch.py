"""``TurnBatch``: the turn samples of one rollout as padded tensors, frozen once built.

One row per (trajectory, turn). Prompts are **left**-padded to ``P`` and responses **right**-padded to ``L`` so that
response token ``j`` is always at input position ``P + j`` (see :mod:`hiper.models.policy`). Role masks and value
read positions come from :func:`hiper.protocol.spans.token_spans` (the trainer-side parse of the generated token
ids); per-turn scalars (reward, done, validity, the switch flag ...) from the :class:`~hiper.rollout.records.TurnRecord`
s. ``traj_index``/``turn_index`` place each row in the padded ``[n_traj, T_max]`` layout of :mod:`hiper.advantage`.

A batch is never written into: what later stages compute per row (log-probs, values, advantages, critic targets)
lives in their own small typed holders (:mod:`hiper.trainer.algorithm`), cut to a micro-batch with :func:`take`.
Paper switch mode (spec §7.1 Mode B) uses :meth:`TurnBatch.with_keep_continuations`, a copy with the KEEP
continuation of every row (for the critic's ``V^low(s_t, o_{t-1})``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from hiper.protocol.grammar import keep_continuation, shown_subgoal
from hiper.protocol.spans import TokenByteTable, token_spans
from hiper.rollout.records import Trajectory

T = TypeVar("T")


def pad_token_lists(seqs: Sequence[Sequence[int]], pad: int, *, left: bool = False) -> tuple[Tensor, Tensor]:
    """Pad int sequences to the longest (at least 1) -> (ids ``[N, W]`` long, mask ``[N, W]`` bool).

    ``left=True`` left-pads (prompts, so every row ends where generation starts); else right-pads (responses).
    """
    width = max(max((len(s) for s in seqs), default=0), 1)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        n = len(s)
        if n:
            sl = slice(width - n, width) if left else slice(0, n)
            ids[i, sl] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, sl] = True
    return ids, mask


def keep_continuation_ids(tokenizer: Any, table: TokenByteTable, subgoals: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Token ids of the KEEP continuations of ``subgoals``, cut at the low-value read position.

    Each text is :func:`keep_continuation` tokenized on its own (no special tokens), as the policy would
    generate it right after the prompt. It is cut after the last token that starts before the end of
    ``</subgoal>`` -- the same rule :func:`hiper.protocol.spans.token_spans` uses for ``v_low_pos`` (first token starting
    at or after the tag's end): with Qwen2.5 ``</subgoal>\n`` ends in one ``>\n`` token that is kept, with a
    tokenizer that has a ``</subgoal>`` token the separate ``\n`` is dropped. So the critic reads V^low after
    the last kept token, which on an exact KEEP copy is the main pass's V_low read position.

    Returns:
        (ids ``[N, K]`` long, mask ``[N, K]`` bool), right-padded with ``tokenizer.pad_token_id``.
    """
    unique = sorted(set(subgoals))
    texts = [keep_continuation(g) for g in unique]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    cut: dict[str, list[int]] = {}
    for g, text, ids in zip(unique, texts, encoded):
        lengths = table.lengths[table.safe_ids(np.asarray(ids, dtype=np.int64))]
        starts = np.cumsum(lengths) - lengths
        tag_end = len(text.encode("utf-8")) - 1  # byte offset of the final newline = end of ``</subgoal>``
        n_keep = int(np.searchsorted(starts, tag_end, side="left"))  # tokens starting before the tag end
        if n_keep == 0 or int(lengths[:n_keep].sum()) < tag_end:
            raise ValueError(f"KEEP continuation {text!r} does not tokenize to its bytes (special-token text?)")
        cut[g] = [int(x) for x in ids[:n_keep]]
    return pad_token_lists([cut[g] for g in subgoals], int(tokenizer.pad_token_id))


def take(obj: T, index: Tensor, width: int | None = None) -> T:
    """Rows ``index`` of a per-row holder (a dataclass, dict or tensor aligned with a batch's rows).

    1-D tensors ``[N]`` are indexed; 2-D token tensors ``[N, L]`` are indexed and cut to the first ``width``
    columns (the response width of the matching :meth:`TurnBatch.select`); dicts and dataclasses recurse; ``None``
    and other values pass through.
    """
    if obj is None:
        return obj
    if isinstance(obj, Tensor):
        out = obj[index]
        return out[:, :width] if (width is not None and out.dim() == 2) else out  # type: ignore[return-value]
    if isinstance(obj, dict):
        return {k: take(v, index, width) for k, v in obj.items()}  # type: ignore[return-value]
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: take(getattr(obj, f.name), index, width) for f in fields(obj)})
    return obj


@dataclass(frozen=True)
class TurnBatch:
    """Padded tensors of ``N`` turn samples (``P`` prompt width, ``L`` response width), as the rollout left them.

    Token tensors: ``prompt_ids``/``prompt_mask`` ``[N, P]`` (left-padded), ``response_ids``/``response_mask``
    ``[N, L]`` (right-padded), role masks ``action_mask``/``subgoal_mask``/``switch_mask`` ``[N, L]`` bool (tags
    included, ANDed with the response mask). Per row: ``v_low_pos``/``v_high_pos`` ``[N]`` long (response
    positions), ``traj_index``/``turn_index`` ``[N]`` long, ``rewards`` ``[N]`` float (env reward, unscaled),
    ``dones`` (ended, not truncated), ``truncated``, ``valid``, ``keep_inconsistent`` and ``switch`` (the switch flag
    q_t, one name from parser to loss) ``[N]`` bool; ``group`` ``[n_traj]`` long. ``rollout_logprobs`` ``[N, L]``:
    the engine's per-token log-probs when every turn recorded them (else None). Paper switch mode only:
    ``prev_subgoals`` (o_{t-1} per row as its prompt shows it) with ``keep_ids``/``keep_mask`` ``[N, K]``.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    action_mask: Tensor
    subgoal_mask: Tensor
    switch_mask: Tensor
    v_low_pos: Tensor
    v_high_pos: Tensor
    traj_index: Tensor
    turn_index: Tensor
    rewards: Tensor
    dones: Tensor
    truncated: Tensor
    valid: Tensor
    keep_inconsistent: Tensor
    switch: Tensor
    group: Tensor
    n_traj: int
    t_max: int
    state_keys: list[str] = field(default_factory=list)
    task_types: list[str] = field(default_factory=list)
    prev_subgoals: list[str] = field(default_factory=list)
    rollout_logprobs: Tensor | None = None
    keep_ids: Tensor | None = None
    keep_mask: Tensor | None = None

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_trajectories(
        cls,
        trajectories: Sequence[Trajectory],
        table: TokenByteTable,
        pad_token_id: int,
        max_prompt_length: int | None = None,
        protocol: str = "plan_execute",
    ) -> TurnBatch:
        """Flatten trajectories into a batch.

        Each turn's ``extras`` must hold ``prompt_ids`` and ``response_ids`` (list of ints, as the engine
        policy records them). Trailing pad tokens of a response are dropped. ``table`` is the
        :class:`~hiper.protocol.spans.TokenByteTable` of the policy tokenizer. Prompts longer than
        ``max_prompt_length`` raise ``ValueError`` (never silently truncated: truncation would change
        the state the policy saw). ``protocol``: the answer protocol the responses follow (``plan_execute`` or
        ``flat``, :data:`hiper.protocol.PROTOCOLS`).
        """
        prompts, responses, rows, gen_logprobs = [], [], [], []
        for i, traj in enumerate(trajectories):
            for t, turn in enumerate(traj.turns):
                extras = turn.extras
                if "prompt_ids" not in extras or "response_ids" not in extras:
                    raise ValueError(
                        f"turn {t} of trajectory {i} has no token ids in extras (got {sorted(extras)}); "
                        "roll out with an engine policy that records prompt_ids/response_ids"
                    )
                p = [int(x) for x in extras["prompt_ids"]]
                r = [int(x) for x in extras["response_ids"]]
                while r and r[-1] == pad_token_id:
                    r.pop()
                if max_prompt_length is not None and len(p) > max_prompt_length:
                    raise ValueError(
                        f"prompt of {len(p)} tokens exceeds rollout.max_prompt_length={max_prompt_length} "
                        f"(task {turn.task}, turn {t})"
                    )
                if not r:
                    r = [pad_token_id]  # an empty generation: one masked-out token keeps shapes valid
                    empty = True
                else:
                    empty = False
                lp = extras.get("logprobs")
                gen_logprobs.append(None if lp is None or empty else [float(x) for x in lp[: len(r)]])
                prompts.append(p)
                responses.append(r)
                rows.append((i, t, turn, empty))
        if not rows:
            raise ValueError("no turns to batch")
        prompt_ids, prompt_mask = pad_token_lists(prompts, pad_token_id, left=True)
        response_ids, response_mask = pad_token_lists(responses, pad_token_id)
        empty_rows = torch.tensor([e for *_, e in rows], dtype=torch.bool)
        response_mask[empty_rows] = False
        spans = token_spans(table, response_ids, response_mask, protocol=protocol)
        n = len(rows)
        traj_index = torch.tensor([i for i, *_ in rows], dtype=torch.long)
        turn_index = torch.tensor([t for _, t, *_ in rows], dtype=torch.long)

        def col(fn: Any, dtype: torch.dtype) -> Tensor:
            return torch.tensor([fn(rec) for _, _, rec, _ in rows], dtype=dtype)

        # the trainer-side parse of the token ids decides the switch flag (spec 2.5 b); the manager's
        # text parse is what the env saw -- they agree for well-formed text
        switch = spans.switch.clone()
        groups = [traj.group if traj.group is not None else i for i, traj in enumerate(trajectories)]
        rollout_logprobs = None
        if all(lp is not None and len(lp) == len(r) for lp, r, (*_, e) in zip(gen_logprobs, responses, rows) if not e):
            rollout_logprobs = torch.zeros(response_ids.shape, dtype=torch.float32)
            for i, lp in enumerate(gen_logprobs):
                if lp:
                    rollout_logprobs[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        return cls(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=spans.response_mask.bool() & response_mask,
            action_mask=spans.action_mask.bool() & response_mask,
            subgoal_mask=spans.subgoal_mask.bool() & response_mask,
            switch_mask=spans.switch_mask.bool() & response_mask,
            v_low_pos=spans.v_low_pos.long().view(n),
            v_high_pos=spans.v_high_pos.long().view(n),
            traj_index=traj_index,
            turn_index=turn_index,
            rewards=col(lambda r: r.reward, torch.float32),
            dones=col(lambda r: r.done and not r.truncated, torch.bool),
            truncated=col(lambda r: r.truncated, torch.bool),
            valid=col(lambda r: r.valid, torch.bool),
            keep_inconsistent=col(lambda r: r.keep_inconsistent, torch.bool),
            switch=switch,
            group=torch.tensor(groups, dtype=torch.long),
            n_traj=len(trajectories),
            t_max=max(len(traj.turns) for traj in trajectories),
            state_keys=[rec.state_key for _, _, rec, _ in rows],
            task_types=[rec.task_type for _, _, rec, _ in rows],
            rollout_logprobs=rollout_logprobs,
        )

    # -- views -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    @property
    def prompt_width(self) -> int:
        return int(self.prompt_ids.shape[1])

    def input_ids(self) -> tuple[Tensor, Tensor]:
        """(``[N, P + L]`` ids, ``[N, P + L]`` attention mask) of prompt + response."""
        ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)
        mask = torch.cat([self.prompt_mask, self.response_mask], dim=1)
        return ids, mask.long()

    def packed_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """(``[N, W]`` ids, ``[N, W]`` attention mask, ``[N]`` start) with each row's prompt and response side by side
        and the padding after them: ``W`` = the longest row, not the widest prompt plus the widest response.

        Row ``i`` holds its ``p_i`` prompt tokens, then response positions ``0 .. R_i - 1`` (``R_i``: up to its last
        attended response token, and past ``v_low_pos``), then padding; ``start[i] = p_i`` is the input position of
        response token 0. Attended tokens, their order and their RoPE positions (from the mask) are those of
        :meth:`input_ids`, so a model sees the same sequences; the micro-batches of the no-grad passes and the
        updates use this layout (length-sorted rows need ~7 % padding here against ~26 % in ``[P | L]``, measured
        on a demo iteration).
        """
        n, width_p = self.prompt_mask.shape
        width_l = self.response_width
        p = self.prompt_mask.sum(1).long()
        seen = self.response_mask.long() * torch.arange(1, width_l + 1)
        extent = torch.maximum(seen.max(1).values, self.v_low_pos.long() + 1).clamp(max=width_l)
        width = max(int((p + extent).max()), 1)
        col = torch.arange(width)[None, :]
        in_prompt = col < p[:, None]
        # prompt tokens sit right-aligned in [P] (left padding): column c < p_i reads prompt column P - p_i + c
        src = torch.where(in_prompt, width_p - p[:, None] + col, width_p + col - p[:, None])
        src = src.clamp(0, width_p + width_l - 1)
        valid = col < (p + extent)[:, None]
        ids, mask = self.input_ids()
        ids = ids.gather(1, src).masked_fill(~valid, 0)
        mask = mask.gather(1, src) * valid
        return ids, mask.long(), p

    def n_tokens(self) -> Tensor:
        """``[N]`` real tokens per row (prompt + response)."""
        return self.prompt_mask.sum(1) + self.response_mask.sum(1)

    def select(self, index: Tensor) -> TurnBatch:
        """Rows ``index`` (``[M]`` long), trimmed to the widest prompt/response among them (less padding).

        The trimmed response width is ``response_width`` of the result; :func:`take` cuts per-iteration
        tensors aligned with this batch (old log-probs, advantages ...) the same way."""
        index = index.long()
        p_len = int(self.prompt_mask[index].sum(1).max())
        r_len = max(int(self.response_mask[index].sum(1).max()), 1)
        r_len = max(r_len, int(self.v_low_pos[index].max()) + 1)
        p0 = self.prompt_width - max(p_len, 1)
        k_len = max(int(self.keep_mask[index].sum(1).max()), 1) if self.keep_mask is not None else 0
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("prompt_ids", "prompt_mask"):
                out[f.name] = v[index, p0:]
            elif f.name in ("group", "n_traj", "t_max"):
                out[f.name] = v
            elif f.name in ("state_keys", "task_types", "prev_subgoals"):
                out[f.name] = [v[int(i)] for i in index] if v else []
            elif f.name in ("keep_ids", "keep_mask"):
                out[f.name] = None if v is None else v[index, :k_len]
            elif isinstance(v, dict):
                out[f.name] = {k: t[index] for k, t in v.items()}
            elif isinstance(v, Tensor):
                out[f.name] = v[index, :r_len] if v.dim() == 2 else v[index]
            else:
                out[f.name] = v
        return replace(self, **out)

    def micro_batches(self, index: Tensor, micro_batch_size: int) -> Iterator[tuple[Tensor, TurnBatch]]:
        """Padding-aware micro-batches over rows ``index``: rows sorted by length, chunked, trimmed.

        Yields ``(rows, sub_batch)``: the row indices (to :func:`take` per-row holders with) and the trimmed batch.
        Sorting is stable on (length, original position), so the split is deterministic.
        """
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        index = index.long()
        lengths = self.n_tokens()[index]
        order = torch.argsort(lengths, stable=True)
        ordered = index[order]
        for start in range(0, len(ordered), micro_batch_size):
            rows = ordered[start : start + micro_batch_size]
            yield rows, self.select(rows)

    @property
    def response_width(self) -> int:
        return int(self.response_ids.shape[1])

    def with_keep_continuations(self, tokenizer: Any, table: TokenByteTable, trajectories: Sequence[Trajectory]) -> TurnBatch:
        """A copy with ``prev_subgoals`` and ``keep_ids``/``keep_mask`` ``[N, K]``, the KEEP continuation of each row.

        o_{t-1} of every row is the env manager's current subgoal before the turn (``TurnRecord.current_subgoal``,
        spec §2.4) as the row's prompt shows it (``"None"`` when unset: turn 0, or no valid subgoal yet; after an
        invalid turn the carried-over subgoal). See :func:`keep_continuation_ids`.
        """
        subgoals = [shown_subgoal(turn.current_subgoal) for traj in trajectories for turn in traj.turns]
        if len(subgoals) != len(self):
            raise ValueError(f"{len(subgoals)} turns in the trajectories for a batch of {len(self)} rows")
        keep_ids, keep_mask = keep_continuation_ids(tokenizer, table, subgoals)
        return replace(self, prev_subgoals=subgoals, keep_ids=keep_ids, keep_mask=keep_mask)

    def exact_keep(self) -> Tensor:
        """``[N]`` bool: rows whose response starts with exactly the tokens of their KEEP continuation, up to the
        low read position (``v_low_pos`` = the continuation's length). On these rows the main pass's V_low and
        V^low(s_t, o_{t-1}) read the same hidden state. All False before :meth:`with_keep_continuations`."""
        if self.keep_ids is None or self.keep_mask is None:
            return torch.zeros(len(self), dtype=torch.bool)
        width = self.keep_ids.shape[1]
        resp_ids = torch.full((len(self), width), -1, dtype=torch.long)
        resp_mask = torch.zeros((len(self), width), dtype=torch.bool)
        n = min(width, self.response_ids.shape[1])
        resp_ids[:, :n], resp_mask[:, :n] = self.response_ids[:, :n], self.response_mask[:, :n]
        same = ((resp_ids == self.keep_ids) & resp_mask) | ~self.keep_mask
        return same.all(1) & (self.v_low_pos == self.keep_mask.sum(1))


__all__ = ["TurnBatch", "keep_continuation_ids", "pad_token_lists", "take"]

"""``TurnBatch``: the flat list of (prompt, response) turn samples of a rollout, as padded tensors.

One row per (trajectory, turn). Prompts are **left**-padded to ``P`` and responses **right**-padded to
``L`` so that response token ``j`` is always at input position ``P + j`` (see
:mod:`hiper.trainer.models`). Role masks and value read positions come from :func:`hiper.spans.token_spans`
(the trainer-side parse of the generated token ids); per-turn scalars (reward, done, validity, ...)
come from the env manager's :class:`~hiper.envs.manager.TurnRecord`. ``traj_index``/``turn_index``
place each row in the padded ``[n_traj, T_max]`` layout of :mod:`hiper.advantage`.

Paper switch mode (spec §7.1 Mode B) adds the KEEP continuation of every row
(:meth:`TurnBatch.attach_keep_continuations`, for the critic's ``V^low(s_t, o_{t-1})``) and the actor's
``switch_prob`` (beta_t = P(SWITCH | s_t, o_{t-1})).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

#: the text the policy would write to KEEP: the canonical response (``hiper.protocol.format_response``) up to and
#: including the newline after ``</subgoal>``; ``{subgoal}`` is the subgoal in force (o_{t-1}).
KEEP_CONTINUATION = "<switch>KEEP</switch>\n<subgoal>{subgoal}</subgoal>\n"


def keep_continuation(subgoal: str | None) -> str:
    """The KEEP continuation text for the subgoal in force ``subgoal`` (``None``/blank -> ``"None"``, as prompts show).

    ``format_response("KEEP", g, a)`` starts with ``keep_continuation(g)`` for every valid ``g``.
    """
    return KEEP_CONTINUATION.format(subgoal=shown_subgoal(subgoal))


def keep_continuation_ids(tokenizer: Any, table: Any, subgoals: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Token ids of the KEEP continuations of ``subgoals``, cut at the low-value read position.

    Each text is :func:`keep_continuation` tokenized on its own (no special tokens), as the policy would
    generate it right after the prompt. It is cut after the last token that starts before the end of
    ``</subgoal>`` -- the same rule :func:`hiper.spans.token_spans` uses for ``v_low_pos`` (first token starting
    at or after the tag's end): with Qwen2.5 ``</subgoal>\n`` ends in one ``>\n`` token that is kept, with a
    tokenizer that has a ``</subgoal>`` token the separate ``\n`` is dropped. So the critic reads V^low after
    the last kept token, which on an exact KEEP copy is the main pass's V_low read position.

    Returns:
        (ids ``[N, K]`` long, mask ``[N, K]`` bool), right-padded with ``tokenizer.pad_token_id``.
    """
    import numpy as np

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


def shown_subgoal(current_subgoal: str | None) -> str:
    """The subgoal text a prompt shows for ``current_subgoal`` (``None``/blank -> ``"None"``), stripped."""
    from hiper.protocol import INITIAL_SUBGOAL

    return current_subgoal.strip() if current_subgoal is not None and current_subgoal.strip() else INITIAL_SUBGOAL


@dataclass
class TurnBatch:
    """Padded tensors of ``N`` turn samples (``P`` prompt width, ``L`` response width).

    Token tensors: ``prompt_ids``/``prompt_mask`` ``[N, P]`` (left-padded), ``response_ids``/
    ``response_mask`` ``[N, L]`` (right-padded), role masks ``action_mask``/``subgoal_mask``/
    ``switch_mask`` ``[N, L]`` bool (tags included, ANDed with the response mask).
    Per-row: ``v_low_pos``/``v_high_pos`` ``[N]`` long (response positions), ``traj_index``/
    ``turn_index`` ``[N]`` long, ``rewards`` ``[N]`` float (env reward, unscaled), ``dones``,
    ``truncated``, ``valid``, ``keep_inconsistent``, ``boundary`` (trainer-side switch flag) ``[N]``
    bool, ``group`` ``[n_traj]`` long. ``rollout_logprobs`` ``[N, L]``: the engine's per-token
    log-probs when every turn recorded them (else None). Filled later by the trainer:
    ``old_logprobs``/``ref_logprobs`` ``[N, L]``, ``old_values`` ``{head: [N]}``, ``advantages``/``loss_mask``
    ``[N, L]``, ``returns``/``value_mask`` ``{head: [N]}``, ``turn_advantages`` ``{role: [N]}`` (raw, before
    whitening: ``action``/``subgoal``/``switch``). Paper switch mode only: ``prev_subgoals`` (per row o_{t-1}, the
    subgoal in force before the turn as its prompt shows it) with ``keep_ids``/``keep_mask`` ``[N, K]`` (its KEEP
    continuation, see :meth:`attach_keep_continuations`), and ``switch_prob`` ``[N]`` (beta_t from the actor).
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
    boundary: Tensor
    group: Tensor
    n_traj: int
    t_max: int
    state_keys: list[str] = field(default_factory=list)
    task_types: list[str] = field(default_factory=list)
    prev_subgoals: list[str] = field(default_factory=list)
    rollout_logprobs: Tensor | None = None
    keep_ids: Tensor | None = None
    keep_mask: Tensor | None = None
    switch_prob: Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    old_values: dict[str, Tensor] = field(default_factory=dict)
    advantages: Tensor | None = None
    loss_mask: Tensor | None = None
    returns: dict[str, Tensor] = field(default_factory=dict)
    value_mask: dict[str, Tensor] = field(default_factory=dict)
    turn_advantages: dict[str, Tensor] = field(default_factory=dict)

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_trajectories(
        cls,
        trajectories: Sequence[Any],
        table: Any,
        pad_token_id: int,
        max_prompt_length: int | None = None,
    ) -> TurnBatch:
        """Flatten trajectories (``Trajectory`` of :mod:`hiper.envs.manager`) into a batch.

        Each turn's ``extras`` must hold ``prompt_ids`` and ``response_ids`` (list of ints, as the engine
        policy records them). Trailing pad tokens of a response are dropped. ``table`` is a
        :class:`hiper.spans.TokenByteTable` for the policy tokenizer. Prompts longer than
        ``max_prompt_length`` raise ``ValueError`` (never silently truncated: truncation would change
        the state the policy saw).
        """
        from hiper.spans import token_spans

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
        spans = token_spans(table, response_ids, response_mask)
        n = len(rows)
        traj_index = torch.tensor([i for i, *_ in rows], dtype=torch.long)
        turn_index = torch.tensor([t for _, t, *_ in rows], dtype=torch.long)

        def col(fn: Any, dtype: torch.dtype) -> Tensor:
            return torch.tensor([fn(rec) for _, _, rec, _ in rows], dtype=dtype)

        # the trainer-side parse of the token ids decides the segment boundary (spec 2.5 b); the manager's
        # text parse is what the env saw -- they agree for well-formed text
        boundary = spans.is_boundary.clone()
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
            boundary=boundary,
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

    def n_tokens(self) -> Tensor:
        """``[N]`` real tokens per row (prompt + response)."""
        return self.prompt_mask.sum(1) + self.response_mask.sum(1)

    def select(self, index: Tensor) -> TurnBatch:
        """Rows ``index`` (``[M]`` long), trimmed to the widest prompt/response among them (less padding)."""
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

    def micro_batches(self, index: Tensor, micro_batch_size: int) -> Iterator[TurnBatch]:
        """Padding-aware micro-batches over rows ``index``: rows sorted by length, chunked, trimmed.

        Sorting is stable on (length, original position), so the split is deterministic.
        """
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        index = index.long()
        lengths = self.n_tokens()[index]
        order = torch.argsort(lengths, stable=True)
        ordered = index[order]
        for start in range(0, len(ordered), micro_batch_size):
            yield self.select(ordered[start : start + micro_batch_size])

    @staticmethod
    def current_subgoals(trajectories: Sequence[Any]) -> list[str]:
        """o_{t-1} of every row, in :meth:`from_trajectories`' row order: the env manager's current subgoal before
        the turn (``TurnRecord.current_subgoal``, spec §2.4), as the row's prompt shows it (``"None"`` when unset:
        turn 0, or no valid subgoal yet; after an invalid turn the carried-over subgoal)."""
        return [shown_subgoal(turn.current_subgoal) for traj in trajectories for turn in traj.turns]

    def attach_keep_continuations(self, tokenizer: Any, table: Any, subgoals: Sequence[str]) -> None:
        """Set ``prev_subgoals`` and ``keep_ids``/``keep_mask`` ``[N, K]``, the KEEP continuation of each row.

        ``subgoals``: o_{t-1} per row (:meth:`current_subgoals` of the batch's trajectories). ``table`` is the
        :class:`hiper.spans.TokenByteTable` of ``tokenizer``. See :func:`keep_continuation_ids`.
        """
        if len(subgoals) != len(self):
            raise ValueError(f"{len(subgoals)} subgoals for a batch of {len(self)} rows")
        self.prev_subgoals = [shown_subgoal(g) for g in subgoals]
        self.keep_ids, self.keep_mask = keep_continuation_ids(tokenizer, table, self.prev_subgoals)

    def exact_keep(self) -> Tensor:
        """``[N]`` bool: rows whose response starts with exactly the tokens of their KEEP continuation, up to the
        low read position (``v_low_pos`` = the continuation's length). On these rows the main pass's V_low and
        V^low(s_t, o_{t-1}) read the same hidden state. All False before :meth:`attach_keep_continuations`."""
        if self.keep_ids is None or self.keep_mask is None:
            return torch.zeros(len(self), dtype=torch.bool)
        width = self.keep_ids.shape[1]
        resp_ids = torch.full((len(self), width), -1, dtype=torch.long)
        resp_mask = torch.zeros((len(self), width), dtype=torch.bool)
        n = min(width, self.response_ids.shape[1])
        resp_ids[:, :n], resp_mask[:, :n] = self.response_ids[:, :n], self.response_mask[:, :n]
        same = ((resp_ids == self.keep_ids) & resp_mask) | ~self.keep_mask
        return same.all(1) & (self.v_low_pos == self.keep_mask.sum(1))

    def turn_tensor(self, flat: Tensor, fill: float | bool | int = 0) -> Tensor:
        """Scatter per-row values ``[N, ...]`` into the padded ``[n_traj, T_max, ...]`` layout."""
        from hiper.advantage.layout import pad_turns

        return pad_turns(flat, self.traj_index, self.turn_index, self.n_traj, self.t_max, fill)

    def flat(self, padded: Tensor) -> Tensor:
        """Gather padded ``[n_traj, T_max, ...]`` values back to rows ``[N, ...]``."""
        from hiper.advantage.layout import unpad

        return unpad(padded, self.traj_index, self.turn_index)

    def token_advantages(self, out: Any) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Broadcast an estimator's per-turn output (``hiper.advantage`` result, padded ``[n_traj, T_max]``) to
        the tokens of this batch's rows (spec §3.8).

        Returns:
            ``(token_adv [N, L] float, loss_mask [N, L] bool, per_row)`` where ``per_row`` holds the row-level
            ``action``/``subgoal``/``switch`` advantages ``[N]`` float and ``subgoal_in_loss`` ``[N]`` bool.
        """
        from hiper.advantage import to_token_level

        per_row = {
            "action": self.flat(out.adv_action).float(),
            "subgoal": self.flat(out.adv_subgoal).float(),
            "switch": self.flat(out.adv_switch).float(),
            "subgoal_in_loss": self.flat(out.subgoal_in_loss).bool(),
        }
        token_adv, loss_mask = to_token_level(
            per_row["action"], per_row["subgoal"], per_row["switch"], per_row["subgoal_in_loss"],
            self.action_mask, self.subgoal_mask, self.switch_mask, self.response_mask,
        )  # fmt: skip
        return token_adv, loss_mask, per_row

    def turn_mask(self) -> Tensor:
        """``[n_traj, T_max]`` bool: which (trajectory, turn) entries are real."""
        return self.turn_tensor(torch.ones(len(self), dtype=torch.bool), fill=False)

    def advantage_inputs(self, values: dict[str, Tensor] | None, reward_scale: float = 1.0) -> Any:
        """:class:`hiper.advantage.AdvantageInputs` of this batch in the padded ``[n_traj, T_max]`` layout.

        ``values``: per-row critic values by head name (``low``, ``high``, ``term``, ``turn``; each ``[N]``),
        or None for critic-free estimators. ``reward_scale`` multiplies the env rewards. GiGPO's anchor
        states are the exact observation texts (``state_keys``), numbered in order of first appearance.
        HAE's paper switch mode reads ``beta`` from ``switch_prob`` and ``v_low_keep`` from ``values["low_keep"]``
        (both None when absent). Values are value-head outputs, i.e. already in scaled-reward units.
        """
        from hiper import advantage

        pad = self.turn_tensor
        keys: dict[str, int] = {}
        state_ids = torch.tensor([keys.setdefault(k, len(keys)) for k in self.state_keys], dtype=torch.long)

        def pv(head: str) -> Tensor | None:
            return None if values is None or head not in values else pad(values[head].float(), 0.0)

        return advantage.AdvantageInputs(
            rewards=pad(self.rewards * reward_scale, 0.0),
            dones=pad(self.dones, False),
            turn_mask=self.turn_mask(),
            switch=pad(self.boundary, False),
            valid=pad(self.valid, True),
            keep_inconsistent=pad(self.keep_inconsistent, False),
            v_low=pv("low"),
            v_high=pv("high"),
            v_term=pv("term"),
            v_turn=pv("turn"),
            beta=None if self.switch_prob is None else pad(self.switch_prob.float(), 0.0),
            v_low_keep=pv("low_keep"),
            group=self.group,
            state_id=pad(state_ids, -1),
            has_subgoal_span=pad(self.subgoal_mask.any(1), False),
            has_switch_span=pad(self.switch_mask.any(1), False),
        )

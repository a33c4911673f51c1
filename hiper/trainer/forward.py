"""No-grad passes over a turn batch: old / reference log-probs, critic values, and beta (paper switch mode).

Each pass walks the batch in length-sorted micro-batches (less padding) and writes per-row results back in row order;
nothing here trains. :func:`score_batch` runs the passes an iteration needs and returns them in one
:class:`Scores` holder (the batch itself is never written into).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hiper.batch import TurnBatch, pad_token_lists
from hiper.models.critic import ValueModel, continue_from_prompt, encode_with_cache
from hiper.models.policy import backbone_and_head, response_logprobs
from hiper.protocol.grammar import SWITCH_CONTINUATIONS


@dataclass(frozen=True)
class Scores:
    """Per-row results of the no-grad passes (``N`` rows, ``L`` response width of the batch).

    Attributes:
        old_logprobs: ``[N, L]`` the behaviour policy's log-probs of the response tokens (PPO's old log-probs).
        ref_logprobs: ``[N, L]`` the frozen reference's log-probs (None without a KL term).
        values: ``{head: [N]}`` critic values at the heads' read positions (empty without a critic); in paper switch
            mode also ``low_keep`` = V^low(s_t, o_{t-1}); a per-token critic gives ``{"token": [N, L]}``.
        beta: ``[N]`` P(SWITCH | s_t, o_{t-1}) under the policy (paper switch mode only, else None).
    """

    old_logprobs: Tensor
    ref_logprobs: Tensor | None
    values: dict[str, Tensor]
    beta: Tensor | None


@torch.no_grad()
def logprobs(batch: TurnBatch, model: nn.Module, micro_batch_size: int, temperature: float,
             device: torch.device) -> Tensor:
    """Teacher-forced log-probs ``[N, L]`` of the batch's responses under ``model`` (no grad)."""
    out = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
    order = torch.argsort(batch.n_tokens(), stable=True)
    for start in range(0, len(order), micro_batch_size):
        rows = order[start : start + micro_batch_size]
        mb = batch.select(rows)
        ids, mask, start = mb.packed_inputs()
        logp, _ = response_logprobs(model, ids.to(device), mask.to(device), start,
                                    mb.response_ids.to(device), temperature=temperature)
        out[rows, : logp.shape[1]] = logp.float().cpu()
    return out


@torch.no_grad()
def values(batch: TurnBatch, critic: ValueModel, micro_batch_size: int, device: torch.device) -> dict[str, Tensor]:
    """Critic values ``{head: [N]}`` at the read positions (no grad); ``{"token": [N, L]}`` for a per-token critic
    (0 past each row's response).

    When the batch carries KEEP continuations (paper switch mode, :meth:`TurnBatch.with_keep_continuations`) the
    result also has ``low_keep`` = V^low(s_t, o_{t-1}), computed in the same micro-batch forward.
    """
    with_keep = batch.keep_ids is not None
    heads = list(critic.heads) + (["low_keep"] if with_keep else [])
    out: dict[str, Tensor] = {h: torch.zeros(batch.response_ids.shape if h == "token" else (len(batch),))
                              for h in heads}
    order = torch.argsort(batch.n_tokens(), stable=True)
    for start in range(0, len(order), micro_batch_size):
        rows = order[start : start + micro_batch_size]
        mb = batch.select(rows)
        if with_keep:  # the KEEP continuations reuse the prompt's KV cache: the [P | L] layout
            assert mb.keep_ids is not None and mb.keep_mask is not None
            ids, mask = mb.input_ids()
            vals = critic.read_values(ids.to(device), mask.to(device), mb.prompt_width, mb.v_low_pos.to(device),
                                      keep_ids=mb.keep_ids.to(device), keep_mask=mb.keep_mask.long().to(device))
        else:
            ids, mask, start = mb.packed_inputs()
            vals = critic.read_values(ids.to(device), mask.to(device), start, mb.v_low_pos.to(device),
                                      response_width=mb.response_width)
        for h, v in vals.items():
            if v.dim() == 2:  # per token: the micro-batch's response width, masked to each row's response
                out[h][rows, : v.shape[1]] = (v.float() * mb.response_mask.to(v.device)).cpu()
            else:
                out[h][rows] = v.float().cpu()
    return out


def switch_continuation_ids(tokenizer: object, pad_id: int) -> tuple[Tensor, Tensor]:
    """Token ids ``[2, C]`` and mask ``[2, C]`` of :data:`SWITCH_CONTINUATIONS` (row 0 SWITCH, row 1 KEEP).

    Each text is tokenized on its own, without special tokens, as the policy generates it after the prompt; the two
    rows are right-padded to the longer one.
    """
    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in SWITCH_CONTINUATIONS]  # type: ignore[operator]
    if any(not s for s in seqs) or seqs[0] == seqs[1]:
        raise ValueError(f"the tokenizer cannot tell {SWITCH_CONTINUATIONS} apart: {seqs}")
    return pad_token_lists(seqs, pad_id)


@torch.no_grad()
def switch_prob(batch: TurnBatch, model: nn.Module, continuations: tuple[Tensor, Tensor], micro_batch_size: int,
                temperature: float, device: torch.device) -> Tensor:
    """beta ``[N]``: P(SWITCH | s_t, o_{t-1}) under ``model``, normalised over SWITCH/KEEP.

    Both :data:`SWITCH_CONTINUATIONS` (``continuations`` = :func:`switch_continuation_ids`) are teacher-forced after
    each row's prompt; with ``log p_S``/``log p_K`` the summed log-probs of their full token sequences (at the rollout
    temperature, like the old log-probs), ``beta = p_S / (p_S + p_K) = sigmoid(log p_S - log p_K)``. One prompt
    forward per micro-batch fills a KV cache that both continuations reuse (rows interleaved S, K), so a turn costs
    one prompt encoding plus ``2 C`` tokens. No grad: beta is a fixed coefficient of the switch advantage.
    """
    decoder, head = backbone_and_head(model)
    cont_ids, cont_mask = continuations
    out = torch.zeros(len(batch), dtype=torch.float32)
    order = torch.argsort(batch.prompt_mask.sum(1), stable=True)
    for start in range(0, len(order), micro_batch_size):
        rows = order[start : start + micro_batch_size]
        mb = batch.select(rows)
        p_ids, p_mask = mb.prompt_ids.to(device), mb.prompt_mask.long().to(device)
        h_prompt, cache = encode_with_cache(decoder, p_ids, p_mask, p_ids.shape[1])
        n = len(rows)
        ids = cont_ids.to(device).repeat(n, 1)  # [2n, C]: rows 2i (SWITCH), 2i + 1 (KEEP) of prompt i
        mask = cont_mask.to(device).repeat(n, 1)
        h_cont = continue_from_prompt(decoder, cache, p_mask, ids, mask.long(), repeats=2)
        del cache
        # token j of a continuation is predicted by the hidden state before it: the prompt's last state for j=0
        h = torch.cat([h_prompt[:, -1:].repeat_interleave(2, dim=0), h_cont[:, :-1]], dim=1)
        logits = head(h).float()
        if temperature != 1.0:
            logits = logits / temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        seq_logp = (logp * mask).sum(1).view(n, 2)  # [n, (SWITCH, KEEP)]
        out[rows] = torch.sigmoid(seq_logp[:, 0] - seq_logp[:, 1]).float().cpu()
    return out


__all__ = ["Scores", "logprobs", "switch_continuation_ids", "switch_prob", "values"]

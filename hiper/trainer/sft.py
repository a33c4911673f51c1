"""Behaviour cloning (SFT warm start) on expert trajectories rendered in the Plan-Execute protocol.

The env manager renders each turn's prompt exactly as during RL; the expert policy
(:class:`hiper.rollout.ExpertPolicy`) writes ``format_response(switch, subgoal, action)``. Each example
is ``(chat_prompt(prompt) token ids, response token ids + EOS)`` and the loss is the mean NLL over
the response tokens only (the prompt is context).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from hiper.envs.base import TaskSpec
from hiper.losses import UpdatesDiverged, masked_sum, safe_step
from hiper.models.policy import backbone_and_head, hidden_states, response_logprobs
from hiper.protocol.prompts import chat_prompt
from hiper.rollout.loop import run_episodes
from hiper.rollout.manager import EnvManager
from hiper.rollout.policies import ExpertPolicy
from hiper.rollout.records import Trajectory
from hiper.trainer.optim import adamw
from hiper.trainer.phases import both


@dataclass
class SFTExample:
    """One (prompt, response) pair as token ids; the loss covers ``response_ids`` only."""

    prompt_ids: list[int]
    response_ids: list[int]


def expert_trajectories(manager: EnvManager, tasks: Sequence[TaskSpec], noise: float = 0.0,
                        seed: int = 0) -> list[Trajectory]:
    """Roll out the env's expert on ``tasks`` through ``manager`` (prompts rendered as in RL); ``noise`` > 0
    perturbs it DART-style (:class:`~hiper.rollout.ExpertPolicy`), seeded by ``seed``."""
    return run_episodes(manager, ExpertPolicy(manager, noise=noise, seed=seed), tasks)


def examples_from_trajectories(
    trajectories: Sequence[Trajectory], tokenizer: Any, max_turns_per_episode: int | None = None
) -> list[SFTExample]:
    """Tokenise every turn: chat-templated prompt ids, response ids followed by the EOS token. Turns whose action
    was a perturbation (``extras["perturbed"]``, a noisy expert) are left out: they are context for the turns after
    them, not behaviour to clone."""
    out = []
    eos = tokenizer.eos_token_id
    for traj in trajectories:
        turns = traj.turns if max_turns_per_episode is None else traj.turns[:max_turns_per_episode]
        for turn in turns:
            if turn.extras.get("perturbed"):
                continue
            prompt = chat_prompt(tokenizer, turn.prompt)
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            r = tokenizer(turn.response, add_special_tokens=False)["input_ids"] + (
                [eos] if eos is not None else []
            )
            out.append(SFTExample(list(p), list(r)))
    return out


def collate(
    examples: Sequence[SFTExample], pad_id: int, device: torch.device | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (input ids ``[B, W]``, attention mask, response start ``[B]``, response ids ``[B, L]``, response mask
    ``[B, L]``), on ``device`` (default CPU).

    Packed, as the RL updates (:meth:`hiper.batch.TurnBatch.packed_inputs`): row ``i`` is its prompt then its
    response, padded after, so ``W`` is the longest example rather than the widest prompt plus the widest response;
    ``start[i]`` is the prompt length (the input position of response token 0).
    """
    width = max(len(e.prompt_ids) + len(e.response_ids) for e in examples)
    r_w = max(len(e.response_ids) for e in examples)
    b = len(examples)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    resp = torch.full((b, r_w), pad_id, dtype=torch.long)
    rmask = torch.zeros((b, r_w), dtype=torch.long)
    for i, e in enumerate(examples):
        lp, lr = len(e.prompt_ids), len(e.response_ids)
        ids[i, : lp + lr] = torch.tensor(e.prompt_ids + e.response_ids)
        mask[i, : lp + lr] = 1
        resp[i, :lr] = torch.tensor(e.response_ids)
        rmask[i, :lr] = 1
    start = torch.tensor([len(e.prompt_ids) for e in examples], dtype=torch.long)
    return ids.to(device), mask.to(device), start.to(device), resp.to(device), rmask.bool().to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def nll_sum(model: nn.Module, examples: Sequence[SFTExample], pad_id: int) -> tuple[Tensor, int]:
    """(sum of response-token NLL, number of response tokens) of one batch (differentiable)."""
    ids, mask, start, resp, rmask = collate(examples, pad_id, _device(model))
    logp, _ = response_logprobs(model, ids, mask, start, resp)
    return -masked_sum(logp, rmask), int(rmask.sum())


def full_nll_sums(model: nn.Module, examples: Sequence[SFTExample], pad_id: int) -> tuple[Tensor, int, Tensor, int]:
    """(response NLL sum, response tokens, prompt NLL sum, prompt tokens) of one batch, one forward pass.

    The prompt part is plain next-token prediction on the prompt text (the first prompt token has no
    prediction). Used when ``prompt_loss_weight > 0``: a model trained from scratch has no language
    prior, and predicting the prompt text teaches it the world's vocabulary and structure.
    """
    ids, mask, start, resp, rmask = collate(examples, pad_id, _device(model))
    decoder, head = backbone_and_head(model)
    logits = head(hidden_states(decoder, ids, mask)[:, :-1]).float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, S-1]
    target_mask = mask[:, 1:].bool() & mask[:, :-1].bool()
    # position j predicts token j + 1: a response token when start <= j + 1 < start + response length
    nxt = torch.arange(1, ids.shape[1], device=ids.device)[None, :]
    is_resp = (nxt >= start[:, None]) & (nxt < (start + rmask.sum(1))[:, None]) & target_mask
    prompt_mask = target_mask & ~is_resp
    return (-masked_sum(logp, is_resp), int(is_resp.sum()), -masked_sum(logp, prompt_mask),
            int(prompt_mask.sum()))


@torch.no_grad()
def mean_nll(model: nn.Module, examples: Sequence[SFTExample], pad_id: int, batch_size: int = 32) -> float:
    """Mean response-token NLL (nats/token) of ``examples`` (no gradient)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(examples), batch_size):
        loss, n = nll_sum(model, examples[s : s + batch_size], pad_id)
        total += float(loss)
        count += n
    model.train(was_training)
    return total / max(count, 1)


def sft_train(
    model: nn.Module,
    examples: Sequence[SFTExample],
    pad_id: int,
    epochs: int = 1,
    lr: float = 1e-4,
    batch_size: int = 16,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    micro_batch_size: int | None = None,
    prompt_loss_weight: float = 0.0,
    max_steps: int | None = None,
    max_bad_steps: int | None = None,
    on_step: Callable[[int], None] | None = None,
    parallel: bool = False,
) -> dict[str, Any]:
    """Behaviour cloning: AdamW on the token-mean response NLL, ``epochs`` shuffled passes (at most ``max_steps``
    optimizer steps when given).

    Shuffling uses a private generator seeded by ``seed`` (global RNG untouched). Batches are split
    into micro-batches of ``micro_batch_size`` with the loss normalised by the batch's token count.
    ``prompt_loss_weight > 0`` adds that weight times the prompt tokens' mean next-token NLL
    (see :func:`full_nll_sums`). A non-finite loss, gradient or weight rolls the step back
    (:func:`hiper.losses.safe_step`); ``max_bad_steps`` consecutive ones raise :class:`~hiper.losses.UpdatesDiverged`. Returns ``{"losses": [per-step mean NLL], "steps", "skipped"}``.

    ``parallel`` (``trainer.parallel_phases``): each micro-batch is split in two (alternate rows of the length-sorted
    batch), and the second half runs forward and backward on a replica of the model on a worker thread; its
    gradients are added to the model's before the step, and the replica takes the new weights after it. The
    gradient is the same sum (up to float rounding); two independent threads use two cores and, unlike two
    intra-op threads per op, do not stall each other under load.
    """
    if not examples:
        raise ValueError("SFT needs at least one example")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer or adamw(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    micro = micro_batch_size or batch_size
    model.train()
    replica = copy.deepcopy(model).train() if parallel else None
    pairs = [] if replica is None else [
        (p, q) for p, q in zip(model.parameters(), replica.parameters()) if p.requires_grad]

    def half_loss(net: nn.Module, part: Sequence[SFTExample], n_tok: int, n_prompt: int) -> Tensor:
        """The micro-batch loss of ``part`` on ``net``, backpropagated (token sums over the batch's counts)."""
        if prompt_loss_weight > 0:
            r_sum, _, p_sum, _ = full_nll_sums(net, part, pad_id)
            loss = r_sum / n_tok + prompt_loss_weight * p_sum / n_prompt
        else:
            loss, _ = nll_sum(net, part, pad_id)
            loss = loss / n_tok
        if torch.isfinite(loss):
            loss.backward()
        return loss.detach()

    losses: list[float] = []
    skipped = bad_run = 0
    for _ in range(epochs):
        order = torch.randperm(len(examples), generator=gen).tolist()
        for s in range(0, len(order), batch_size):
            if max_steps is not None and len(losses) >= max_steps:
                break
            batch = [examples[i] for i in order[s : s + batch_size]]
            n_tok = sum(len(e.response_ids) for e in batch)
            n_prompt = max(sum(len(e.prompt_ids) - 1 for e in batch), 1)
            total, finite = 0.0, True
            # sort by length so micro-batches carry little padding
            batch.sort(key=lambda e: len(e.prompt_ids) + len(e.response_ids))
            for m in range(0, len(batch), micro):
                part = batch[m : m + micro]
                if replica is not None and len(part) > 1:
                    a, b = both(partial(half_loss, model, part[::2], n_tok, n_prompt),
                                partial(half_loss, replica, part[1::2], n_tok, n_prompt),
                                parallel=True, times={}, names=("sft_half", "sft_replica_half"))
                    loss = a + b
                else:
                    loss = half_loss(model, part, n_tok, n_prompt)
                if not torch.isfinite(loss):
                    finite = False
                    break
                total += float(loss)
            with torch.no_grad():  # the replica's half of the gradient joins the model's; it is then cleared
                for p, q in pairs:
                    if finite and q.grad is not None:
                        p.grad = q.grad.clone() if p.grad is None else p.grad.add_(q.grad)
                    q.grad = None
            stepped, _ = safe_step(opt, params, grad_clip, loss_finite=finite)
            with torch.no_grad():  # the replica takes the new (or rolled-back) weights
                for p, q in pairs:
                    q.copy_(p)
            skipped += not stepped
            bad_run = 0 if stepped else bad_run + 1
            if max_bad_steps is not None and bad_run >= max_bad_steps:
                raise UpdatesDiverged(f"SFT: {bad_run} consecutive steps rolled back (non-finite loss, gradients or "
                                      f"weights at lr={lr:g}): lower sft.lr")
            losses.append(total if finite else math.nan)
            if on_step is not None:
                on_step(1)
    model.eval()
    return {"losses": losses, "steps": len(losses), "skipped": skipped}


"""``hiper bench advantage``: span/mask building, HAE and the slow reference loop on a realistic synthetic batch.

The batch mimics one official ALFWorld iteration: 128 trajectories of 1..50 turns (~3,300 turn samples), each
response a Plan-Execute response (about 5% malformed) tokenized with the real Qwen2.5 tokenizer plus ``<|im_end|>``.
Timed (median of ``--repeats`` runs after warm-up, milliseconds):

* ``masks_ms``: ``hiper.protocol.spans.token_spans`` -- parse + action/subgoal/switch token masks + value read positions;
* ``hae_ms``: ``hiper.advantage.hae`` on the padded ``[128, 50]`` layout;
* ``estimator_ms``: ``get("hae")`` -- shaping + HAE + per-role whitening + metrics;
* ``token_level_ms``: ``unpad`` of the three role advantages + ``to_token_level`` to ``[B, L]``;
* ``reference_ms``: ``hiper.advantage.reference.reference_hae`` (per-turn Python loop; slow by design).

The spans part reports ``null`` (with ``masks_skipped`` saying why) when ``hiper.protocol.spans`` or the tokenizer is
missing. Tokenizer path: ``--tokenizer``, else ``$HIPER_SHARED/models/qwen2.5-instruct-tokenizer`` with
``HIPER_SHARED`` defaulting to ``<repo>/../shared``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hiper.advantage import AdvantageInputs, HAEConfig, get, hae, pad_turns, to_token_level, unpad
from hiper.advantage.reference import reference_hae
from hiper.protocol import format_response
from hiper.protocol.spans import TokenByteTable, token_spans

TARGETS_MS = {"masks_ms": 15.0, "hae_ms": 6.0}  # targets on the 2-core dev machine (official: 750 / 310 ms)

_OBJECTS = [
    "apple",
    "mug",
    "knife",
    "plate",
    "potato",
    "soapbar",
    "cd",
    "pen",
    "lettuce",
    "egg",
    "bowl",
    "book",
]
_PLACES = [
    "countertop",
    "fridge",
    "microwave",
    "sinkbasin",
    "cabinet",
    "drawer",
    "shelf",
    "desk",
    "garbagecan",
]
_VERBS = ["go to", "open", "close", "examine"]


def default_tokenizer_path() -> Path:
    shared = os.environ.get("HIPER_SHARED") or str(Path(__file__).resolve().parents[2].parent / "shared")
    return Path(shared) / "models" / "qwen2.5-instruct-tokenizer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-traj", type=int, default=128, help="trajectories in the batch")
    parser.add_argument("--max-turns", type=int, default=50, help="T_max; lengths are uniform in 1..T_max")
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed runs of each fast path (median reported)"
    )
    parser.add_argument(
        "--reference-repeats", type=int, default=3, help="timed runs of the slow reference loop"
    )
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer folder (default: the shared Qwen2.5 one)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def synthetic_responses(n_turns: int, rng: random.Random) -> list[str]:
    """Plan-Execute responses for ``n_turns`` turns: ~70% KEEP, ~5% malformed (no action tags, garbage switch,
    missing subgoal), ALFWorld-like subgoal and action text."""
    out = []
    for _ in range(n_turns):
        obj, place = rng.choice(_OBJECTS), f"{rng.choice(_PLACES)} {rng.randint(1, 12)}"
        subgoal = f"find the {obj} and bring it to the {place}, then check it is clean."
        action = rng.choice([f"{rng.choice(_VERBS)} {place}", f"take {obj} {rng.randint(1, 3)} from {place}"])
        switch = "SWITCH" if rng.random() < 0.3 else "KEEP"
        u = rng.random()
        if u < 0.02:
            out.append(
                f"I think I should {action} now."
            )  # no tags at all: action fallback to the whole response
        elif u < 0.035:
            out.append(
                f"<switch>SWITCH or KEEP</switch>\n<subgoal>{subgoal}</subgoal>\n<action>{action}</action>"
            )
        elif u < 0.05:
            out.append(f"<switch>{switch}</switch>\n<action>{action}</action>")
        else:
            out.append(format_response(switch, subgoal, action))
    return out


def make_batch(n_traj: int, t_max: int, seed: int) -> dict[str, Any]:
    """Padded HAE inputs (float32) and the flat turn index of a synthetic batch."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t_max + 1, (n_traj,), generator=gen)
    mask = torch.arange(t_max).unsqueeze(0) < lengths.unsqueeze(1)
    last = torch.zeros_like(mask)
    last[torch.arange(n_traj), lengths - 1] = True
    won = torch.rand(n_traj, generator=gen) < 0.5
    dones = last & (won | (lengths == t_max)).unsqueeze(1)
    rewards = torch.where(last & won.unsqueeze(1), 10.0, 0.0)
    traj_index, turn_index = torch.nonzero(mask, as_tuple=True)
    values = {k: torch.randn(n_traj, t_max, generator=gen) * 3 for k in ("v_low", "v_high", "v_term")}
    return {"mask": mask, "dones": dones, "rewards": rewards, "traj_index": traj_index, "turn_index": turn_index,
            "valid": torch.rand(n_traj, t_max, generator=gen) < 0.95,
            "switch": torch.rand(n_traj, t_max, generator=gen) < 0.3, **values}  # fmt: skip


def _tokenize(tokenizer_path: Path, texts: list[str]) -> tuple[Any, torch.Tensor, torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_path))
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rows = [ids + [eos] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return tok, ids, mask


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = make_batch(args.n_traj, args.max_turns, args.seed)
    mask = batch["mask"]
    n_turns = int(mask.sum())
    result: dict[str, Any] = {
        "bench": "advantage",
        "n_traj": args.n_traj,
        "t_max": args.max_turns,
        "n_turns": n_turns,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "targets_ms": TARGETS_MS,
    }

    # ---- spans / masks on real tokens ----
    texts = synthetic_responses(n_turns, random.Random(args.seed))
    tok_path = Path(args.tokenizer) if args.tokenizer else default_tokenizer_path()
    spans = None
    result.update({"masks_ms": None, "table_build_ms": None, "tokenizer": str(tok_path)})
    if not (tok_path / "tokenizer.json").exists() and not (tok_path / "tokenizer_config.json").exists():
        result["masks_skipped"] = f"tokenizer not found at {tok_path} (set --tokenizer or HIPER_SHARED)"
    else:
        tok, ids, resp_mask = _tokenize(tok_path, texts)
        t0 = time.perf_counter()
        table = TokenByteTable.from_tokenizer(tok)
        result["table_build_ms"] = (time.perf_counter() - t0) * 1e3
        result["masks_ms"] = _median_ms(lambda: token_spans(table, ids, resp_mask), args.repeats)
        spans = token_spans(table, ids, resp_mask)
        result["response_tokens_mean"] = float(resp_mask.sum(dim=1).float().mean())
        result["response_tokens_max"] = int(resp_mask.shape[1])
        # the trainer-side switch flag comes from the parsed tokens
        flat_switch = spans.switch
        batch["switch"] = pad_turns(
            flat_switch, batch["traj_index"], batch["turn_index"], *mask.shape, fill=False
        )

    # ---- HAE (fast path), the full estimator, token broadcast ----
    cfg = HAEConfig(keep_penalty=-0.3, keep_consistency_penalty=-0.3, invalid_penalty=0.1)
    hae_args = (batch["rewards"], batch["dones"], batch["switch"], batch["v_low"], batch["v_high"], batch["v_term"],
                mask, cfg)  # fmt: skip
    result["hae_ms"] = _median_ms(lambda: hae(*hae_args), args.repeats)
    inputs = AdvantageInputs(
        rewards=batch["rewards"], dones=batch["dones"], turn_mask=mask, switch=batch["switch"],
        valid=batch["valid"], keep_inconsistent=torch.zeros_like(mask), v_low=batch["v_low"],
        v_high=batch["v_high"], v_term=batch["v_term"],
    )  # fmt: skip
    estimator = get("hae")
    result["estimator_ms"] = _median_ms(lambda: estimator(inputs, cfg), args.repeats)
    if spans is not None:
        out = estimator(inputs, cfg)
        ti, tu = batch["traj_index"], batch["turn_index"]

        def broadcast() -> Any:
            return to_token_level(
                unpad(out.adv_action, ti, tu), unpad(out.adv_subgoal, ti, tu), unpad(out.adv_switch, ti, tu),
                unpad(out.subgoal_in_loss, ti, tu), spans.action_mask, spans.subgoal_mask, spans.switch_mask,
            )  # fmt: skip

        result["token_level_ms"] = _median_ms(broadcast, args.repeats)
    else:
        result["token_level_ms"] = None

    # ---- slow reference, and agreement ----
    result["reference_ms"] = _median_ms(lambda: reference_hae(*hae_args), args.reference_repeats, warmup=0)
    fast, ref = hae(*hae_args), reference_hae(*hae_args)
    result["max_abs_diff_vs_reference"] = max(
        float((getattr(fast, k).double() - ref[k]).abs().max())
        for k in ("adv_low", "adv_high", "adv_term", "ret_low", "ret_high", "ret_term")
    )
    result["hae_speedup_vs_reference"] = result["reference_ms"] / max(result["hae_ms"], 1e-9)
    result["switch_rate"] = float((batch["switch"] & mask).sum()) / n_turns
    result["meets_targets"] = {
        k: (result[k] is not None and result[k] <= v) for k, v in TARGETS_MS.items()
    }  # None (skipped) counts as not met
    return result

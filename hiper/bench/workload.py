"""The benchmarks' workloads: prompts rendered from real env states, and random-weight models of known shapes.

:func:`build_prompts` plays the env's expert for a random number of turns so prompts carry history, then renders
and tokenizes the prompt the policy would see; :func:`random_model_dir` saves a random-weight Qwen2 of a preset
shape (for machines that cannot download weights).
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiper.envs import ENV_FAMILIES, make_batch, task_panel
from hiper.protocol import chat_prompt
from hiper.rollout.engine import encode_prompts
from hiper.rollout.loop import advance, episodes
from hiper.rollout.manager import EnvManager
from hiper.rollout.policies import ExpertPolicy
from hiper.rollout.records import TurnRequest

#: ``random:<name>`` model shapes (Qwen2.5 layouts; vocabulary 151936 as in the released checkpoints)
RANDOM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128),
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864),
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960),
}  # fmt: skip


@dataclass
class PromptSet:
    """Benchmark prompts: ``prompt_ids[i]`` (chat-templated, tokenized) was rendered from ``tasks[i]`` after
    ``depths[i]`` expert turns (fewer when the episode ended first)."""

    tasks: list[Any]
    prompt_ids: list[list[int]]
    depths: list[int]
    seconds: float

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompt_ids)

    @property
    def digest(self) -> str:
        """Short hash of the prompt ids (equal on two machines == the same prompts were measured)."""
        h = hashlib.sha1()
        for p in self.prompt_ids:
            h.update(json.dumps(p).encode())
        return h.hexdigest()[:12]


def _panel_kwargs(env: str, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"data_dir": env_kwargs["data_dir"]} if env == "alfworld" and "data_dir" in env_kwargs else {}


def build_prompts(
    env: str,
    n: int,
    tokenizer: Any,
    *,
    split: str = "train",
    seed: int = 0,
    max_depth: int = 4,
    env_workers: int = 0,
    history_length: int = 2,
    env_kwargs: dict[str, Any] | None = None,
) -> PromptSet:
    """``n`` protocol prompts from real env states: task ``i`` of ``split``'s panel is reset and played by
    the expert for ``depth_i ~ U{0..max_depth}`` turns (seeded); its next prompt is chat-templated with
    ``tokenizer`` and encoded (no special tokens added: the template carries them)."""
    if n < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n}")
    if max_depth < 0:
        raise ValueError(f"max_depth must be >= 0, got {max_depth}")
    if env not in ENV_FAMILIES:
        raise ValueError(f"unknown env {env!r}; known: {sorted(ENV_FAMILIES)}")
    env_kwargs = dict(env_kwargs or {})
    t0 = time.perf_counter()
    tasks = task_panel(env, split, n=n, seed=seed, **_panel_kwargs(env, env_kwargs))
    if len(tasks) < n:
        raise ValueError(f"{env} split {split!r} has {len(tasks)} tasks, asked for {n} prompts")
    rng = random.Random(seed)
    depths = [rng.randint(0, max_depth) for _ in tasks]
    manager = EnvManager(
        make_batch(env, n_workers=env_workers, **env_kwargs),
        family=ENV_FAMILIES[env],
        history_length=history_length,
    )
    loop = episodes(manager, tasks)  # THE rollout loop; envs that reached their depth are simply not answered
    try:
        requests: list[TurnRequest] | None = next(loop)
        last = {r.slot: r for r in requests}
        expert = ExpertPolicy(manager)
        while requests:
            todo = [r for r in requests if r.turn < depths[r.slot]]
            if not todo:
                break
            requests = advance(loop, (expert.act(todo), None))
            last.update({r.slot: r for r in requests or []})
    finally:
        loop.close()
        manager.close()
    ordered = [last[i] for i in range(len(tasks))]
    texts = [chat_prompt(tokenizer, r.prompt) for r in ordered]
    return PromptSet(
        tasks=list(tasks),
        prompt_ids=encode_prompts(tokenizer, texts),
        depths=[r.turn for r in ordered],
        seconds=time.perf_counter() - t0,
    )


def random_model_dir(
    preset: str, tokenizer: Any, folder: str | Path | None = None, seed: int = 0, device: str = "cpu"
) -> Path:
    """Save a random-weight ``Qwen2ForCausalLM`` of shape ``RANDOM_PRESETS[preset]`` (bf16 safetensors) and
    ``tokenizer`` into ``folder`` (default: a new temporary folder) and return it (a folder vLLM can load).
    ``device="cuda"`` initialises on the GPU (a 1.5B model: about 70 s on 16 CPU cores)."""
    import torch
    import transformers

    if preset not in RANDOM_PRESETS:
        raise ValueError(f"unknown random model {preset!r}; known: {sorted(RANDOM_PRESETS)}")
    out = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix=f"hiper-random-{preset}-"))
    cfg = transformers.Qwen2Config(
        vocab_size=max(151936, len(tokenizer)), tie_word_embeddings=True, max_position_embeddings=32768,
        rope_theta=1_000_000.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        torch_dtype="bfloat16", **RANDOM_PRESETS[preset],
    )  # fmt: skip
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: a 1.5B model never exists in fp32 here
    try:
        with torch.device(device):
            model = transformers.Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


__all__ = ["RANDOM_PRESETS", "PromptSet", "build_prompts", "random_model_dir"]

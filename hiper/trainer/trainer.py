"""The HiPER trainer: rollout -> turn batch -> critic values -> advantages -> critic + PPO actor update.

``Trainer(config)`` takes the typed config of :mod:`hiper.trainer.config` (or any dict / dataclass /
namespace tree with the same key names, see ``docs/trainer.md``). One :meth:`Trainer.iteration` is the
algorithm box of spec §3.13 with every stage timed (``time/generate``, ``time/env``, ``time/critic``,
``time/advantage``, ``time/update``). :meth:`Trainer.train` runs the optional SFT warm start, then
``trainer.total_iterations`` iterations with held-out evaluation every ``trainer.eval_every``.

HAE switch modes (``algorithm.hae.switch_mode``, spec §3.7 / §7.1): ``code`` (default; the official
three-head critic, switch advantage GT_t - VT_t) and ``paper`` (two heads suffice; switch advantage
(q_t - beta_t)(VH_t - VL^keep_t)). Paper mode adds two no-grad passes per iteration: the actor's
beta_t = P(SWITCH | s_t, o_{t-1}) (:meth:`Trainer.compute_switch_prob`) and the critic's
VL^keep_t = V^low(s_t, o_{t-1}) on the KEEP continuation, which shares the prompt encoding of the main critic
pass (:meth:`Trainer.compute_values`).

Determinism and exact resume: every random choice of iteration ``k`` (task sampling, the engine's
sampling seeds, mini-batch shuffling) is drawn from generators seeded by ``(seed, k)``, never from a
hidden global stream, so ``2 + 2`` iterations with :meth:`state_dict` / :meth:`load_state_dict` in
between equal 4 straight iterations bit for bit. The global python / numpy / torch RNG states are
saved too, for code outside the trainer that uses them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hiper.trainer import ppo
from hiper.trainer.critic import ValueModel, build_critic, continue_from_prompt, encode_with_cache
from hiper.trainer.models import (
    backbone_and_head,
    build_policy,
    cfg_get,
    load_tokenizer,
    make_reference,
    response_logprobs,
    split_gguf,
)
from hiper.trainer.turn_batch import TurnBatch

#: estimators that need a critic, and the value heads they read.
CRITIC_HEADS = {"hae": ("low", "high", "term"), "gae": ("turn",)}
STAGES = ("generate", "env", "critic", "advantage", "update")
#: the two teacher-forced switch decisions whose probabilities give beta (paper switch mode): the canonical
#: response's first block up to its value (``hiper.protocol.format_response``), tokenized on their own.
SWITCH_CONTINUATIONS = ("<switch>SWITCH", "<switch>KEEP")


def _seed_of(*parts: int) -> int:
    """A 63-bit seed derived deterministically from integers (splitmix-style mixing)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x ^= (int(p) + 0x9E3779B97F4A7C15 + ((x << 6) & 0xFFFFFFFFFFFFFFFF) + (x >> 2)) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def _section(cfg: Any, name: str) -> Any:
    return cfg_get(cfg, name, {})


def _as_dict(x: Any) -> dict[str, Any]:
    if x is None:
        return {}
    if isinstance(x, dict):
        return dict(x)
    if is_dataclass(x):
        return {f.name: getattr(x, f.name) for f in fields(x)}
    return dict(vars(x))


class Trainer:
    """SFT warm start + HiPER RL (or a baseline estimator) on one env, CPU or one GPU.

    Args:
        config: the run config (see the module docstring).
        logger: optional object with ``log(metrics: dict, step: int)`` (tensorboard / jsonl / console).
        tokenizer: optional pre-built tokenizer (otherwise from ``model.tokenizer`` / ``model.path``).
        callbacks: optional callables ``f(metrics, step)`` called after every iteration / eval.
    """

    def __init__(
        self,
        config: Any,
        logger: Any = None,
        tokenizer: Any = None,
        callbacks: Sequence[Callable[[dict[str, Any], int], None]] = (),
    ) -> None:
        self.config = config
        self.logger = logger
        self.callbacks = list(callbacks)
        self.seed = int(cfg_get(config, "seed", 0))
        self.env_cfg = _section(config, "env")
        self.model_cfg = _section(config, "model")
        self.critic_cfg = _section(config, "critic")
        self.actor_cfg = _section(config, "actor")
        self.rollout_cfg = _section(config, "rollout")
        self.algo_cfg = _section(config, "algorithm")
        self.sft_cfg = _section(config, "sft")
        self.trainer_cfg = _section(config, "trainer")
        self.device = torch.device(cfg_get(self.trainer_cfg, "device", "cpu"))
        n_threads = cfg_get(self.trainer_cfg, "num_threads", None)
        if n_threads:
            # tiny CPU models: one intra-op thread avoids oversubscription stalls on small shared machines
            torch.set_num_threads(int(n_threads))
        self.estimator_name = str(cfg_get(self.algo_cfg, "adv_estimator", "hae"))
        self.switch_mode = str(cfg_get(_section(self.algo_cfg, "hae"), "switch_mode", "code"))
        if self.switch_mode not in ("code", "paper"):
            raise ValueError(f"algorithm.hae.switch_mode must be 'code' or 'paper', got {self.switch_mode!r}")
        self._switch_cont: tuple[Tensor, Tensor] | None = None

        from hiper.envs import ENV_FAMILIES

        self.env_name = str(cfg_get(self.env_cfg, "name", "household"))
        if self.env_name not in ENV_FAMILIES:
            raise ValueError(f"unknown env {self.env_name!r}; known: {sorted(ENV_FAMILIES)}")
        self.family = ENV_FAMILIES[self.env_name]

        self.tokenizer = tokenizer if tokenizer is not None else self._build_tokenizer()
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.policy = build_policy(self.model_cfg, self.tokenizer, seed=self.seed).to(self.device)
        self.policy.eval()
        from hiper.spans import TokenByteTable

        self.table = TokenByteTable.from_tokenizer(self.tokenizer)
        self.actor_opt = self._adamw(
            [p for p in self.policy.parameters() if p.requires_grad],
            cfg_get(self.actor_cfg, "lr", 1e-6),
            cfg_get(self.actor_cfg, "weight_decay", 0.01),
        )
        self.critic: ValueModel | None = None
        self.critic_opt: torch.optim.Optimizer | None = None
        self.reference: torch.nn.Module | None = None
        self.rl_ready = False
        self.sft_done = False
        self.iteration_count = 0
        self.history: list[dict[str, Any]] = []
        self._engine: Any = None
        self._manager: Any = None
        self._eval_manager: Any = None
        self._train_pool: list[Any] | None = None
        self.last_batch: TurnBatch | None = None
        self.loss_cfg = ppo.PPOLossConfig(
            clip_ratio_low=float(cfg_get(self.actor_cfg, "clip_ratio_low", 0.2)),
            clip_ratio_high=float(cfg_get(self.actor_cfg, "clip_ratio_high", 0.2)),
            clip_ratio_c=float(cfg_get(self.actor_cfg, "clip_ratio_c", 3.0)),
            kl_coef=float(cfg_get(self.actor_cfg, "kl_coef", 0.01)),
            entropy_coeff=float(cfg_get(self.actor_cfg, "entropy_coeff", 0.001)),
        )

    # ------------------------------------------------------------------------------------------
    # construction helpers
    # ------------------------------------------------------------------------------------------

    def _build_tokenizer(self) -> Any:
        spec = cfg_get(self.model_cfg, "tokenizer", None)
        if spec in ("builtin", "household-bpe", "demo"):
            from hiper.trainer.demo import household_tokenizer

            return household_tokenizer(self.env_name, _as_dict(cfg_get(self.env_cfg, "kwargs", {})))
        path = spec or cfg_get(self.model_cfg, "path", None)
        if not path:
            raise ValueError("set model.tokenizer (a path, or 'builtin' for the code-built household BPE) or model.path")
        folder, gguf = split_gguf(str(path))
        return load_tokenizer(folder, gguf_file=gguf)

    @staticmethod
    def _adamw(params: list[torch.nn.Parameter], lr: float, wd: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=float(lr), weight_decay=float(wd), betas=(0.9, 0.999))

    @property
    def paper_mode(self) -> bool:
        """HAE with ``switch_mode=paper``: the iteration also computes beta and V^low(s_t, o_{t-1})."""
        return self.estimator_name == "hae" and self.switch_mode == "paper"

    @property
    def needs_critic(self) -> bool:
        return self.estimator_name in CRITIC_HEADS and bool(cfg_get(self.critic_cfg, "enabled", True))

    def setup_rl(self) -> None:
        """Build the critic (from the current, e.g. SFT-ed, policy) and the frozen KL reference."""
        if self.rl_ready:
            return
        if self.needs_critic:
            default_heads = (2 if self.paper_mode else 3) if self.estimator_name == "hae" else 1
            n_heads = int(cfg_get(self.critic_cfg, "n_heads", default_heads))
            if self.estimator_name == "hae" and n_heads < 2:
                raise ValueError("HAE needs a critic with 2 (paper) or 3 (code) heads")
            if self.estimator_name == "hae" and not self.paper_mode and n_heads != 3:
                raise ValueError("algorithm.hae.switch_mode=code needs the term head: set critic.n_heads=3 "
                                 "(or algorithm.hae.switch_mode=paper for two heads)")
            if self.estimator_name == "gae" and n_heads != 1:
                raise ValueError("the flat GAE baseline uses a 1-head critic (critic.n_heads=1)")
            ccfg = {**_as_dict(self.critic_cfg), "n_heads": n_heads}
            self.critic = build_critic(ccfg, self.policy).to(self.device)
            self.critic.eval()
            self.critic_opt = self._adamw(
                self.critic.trainable_parameters(),
                cfg_get(self.critic_cfg, "lr", 1e-5),
                cfg_get(self.critic_cfg, "weight_decay", 0.01),
            )
        elif self.estimator_name in CRITIC_HEADS:
            raise ValueError(f"adv_estimator={self.estimator_name!r} needs critic.enabled=true")
        if self.loss_cfg.kl_coef > 0:
            self.reference = make_reference(self.policy).to(self.device)
        self.rl_ready = True

    @property
    def engine(self) -> Any:
        """The generation engine of ``rollout.engine``: ``hf`` (the training model itself) or ``vllm``
        (its own copy of the weights, refreshed by ``engine.sync()`` after each update)."""
        if self._engine is None:
            kind = cfg_get(self.rollout_cfg, "engine", "hf")
            if kind == "vllm":
                from hiper.rollout.vllm_engine import VLLMEngine

                path = cfg_get(self.model_cfg, "path", None)
                if not path:
                    raise ValueError("rollout.engine=vllm needs model.path (a checkpoint vLLM can load)")
                self._engine = VLLMEngine.from_pretrained(path, tokenizer=self.tokenizer, source=self.policy)
                self._engine.sync()  # the policy may already differ from model.path (SFT, resume, LoRA)
            elif kind == "hf":
                from hiper.rollout.hf import HFEngine

                self._engine = HFEngine(self.policy, self.tokenizer)
            else:
                raise ValueError(f"unknown rollout.engine {kind!r}; known: hf, vllm")
        return self._engine

    def _make_manager(self) -> Any:
        from hiper.envs.manager import EnvManager, make_batch

        kwargs = _as_dict(cfg_get(self.env_cfg, "kwargs", {}))
        max_steps = cfg_get(self.env_cfg, "max_steps", None)
        if max_steps is not None:
            kwargs.setdefault("max_steps", int(max_steps))
        batch = make_batch(self.env_name, n_workers=int(cfg_get(self.env_cfg, "n_workers", 0)), **kwargs)
        renderer = None
        if cfg_get(self.env_cfg, "prompt", "default") == "compact":
            from hiper.trainer.demo import compact_renderer

            renderer = compact_renderer
        return EnvManager(
            batch, family=self.family, history_length=int(cfg_get(self.env_cfg, "history_length", 2)), renderer=renderer
        )

    @property
    def manager(self) -> Any:
        if self._manager is None:
            self._manager = self._make_manager()
        return self._manager

    @property
    def eval_manager(self) -> Any:
        if self._eval_manager is None:
            self._eval_manager = self._make_manager()
        return self._eval_manager

    # ------------------------------------------------------------------------------------------
    # tasks
    # ------------------------------------------------------------------------------------------

    def train_pool(self) -> list[Any]:
        """The training task pool: ``env.train_pool_size`` tasks of ``env.train_split`` (fixed per seed)."""
        if self._train_pool is None:
            from hiper.envs import task_panel

            n = int(cfg_get(self.env_cfg, "train_pool_size", 4096))
            split = str(cfg_get(self.env_cfg, "train_split", "train"))
            try:
                self._train_pool = task_panel(self.env_name, split, n=n, seed=self.seed)
            except ValueError:  # the split is smaller than the pool size: use all of it
                self._train_pool = task_panel(self.env_name, split, n=None, seed=self.seed)
            if not self._train_pool:
                raise ValueError(f"env {self.env_name!r} has no tasks in its train split")
        return self._train_pool

    def tasks_for_iteration(self, iteration: int) -> list[Any]:
        """The distinct tasks of iteration ``iteration`` (a pure function of seed and iteration).

        ``env.n_envs`` trajectories = ``n_envs // group_size`` tasks x ``group_size``. Tasks are read
        from a per-epoch permutation of the pool, so every task is seen once per epoch.
        """
        pool = self.train_pool()
        group = int(cfg_get(self.env_cfg, "group_size", 1))
        n_tasks = max(1, int(cfg_get(self.env_cfg, "n_envs", 16)) // group)
        out = []
        for k in range(n_tasks):
            pos = iteration * n_tasks + k
            epoch, offset = divmod(pos, len(pool))
            perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(_seed_of(self.seed, 7, epoch)))
            out.append(pool[int(perm[offset])])
        return out

    def eval_tasks(self, n: int | None = None, seed_offset: int = 0) -> list[Any]:
        """Held-out panel: the first ``n`` (default ``env.eval_episodes``) tasks of ``env.eval_split``."""
        from hiper.envs import task_panel

        n = int(n if n is not None else cfg_get(self.env_cfg, "eval_episodes", 32))
        split = str(cfg_get(self.env_cfg, "eval_split", "valid_seen"))
        return task_panel(self.env_name, split, n=n, seed=int(cfg_get(self.env_cfg, "eval_seed", 0)) + seed_offset)

    # ------------------------------------------------------------------------------------------
    # rollout
    # ------------------------------------------------------------------------------------------

    def rollout(
        self, manager: Any, tasks: Sequence[Any], group_size: int, temperature: float, seed: int
    ) -> tuple[list[Any], dict[str, float]]:
        """Run the policy on ``tasks`` until every episode ends; returns trajectories and stage timings.

        Generation is batched over active envs; each batched call gets the seed ``(seed, turn)``.
        """
        from hiper.rollout.policies import EnginePolicy

        policy = EnginePolicy(
            self.engine,
            self.tokenizer,
            temperature=temperature,
            top_p=float(cfg_get(self.rollout_cfg, "top_p", 1.0)),
            max_new_tokens=int(cfg_get(self.rollout_cfg, "max_new_tokens", 64)),
        )
        t_gen = t_env = 0.0
        n_tokens = 0
        t0 = time.perf_counter()
        manager.reset(tasks, group_size=group_size)
        t_env += time.perf_counter() - t0
        turn = 0
        self.policy.eval()
        while manager.active:
            requests = manager.requests()
            t0 = time.perf_counter()
            outputs = self.engine.generate(
                policy.prompts(requests),
                temperature=temperature,
                top_p=policy.top_p,
                max_new_tokens=policy.max_new_tokens,
                stop=policy.stop,
                seed=_seed_of(seed, turn),
            )
            t_gen += time.perf_counter() - t0
            responses, extras = {}, {}
            for r, o in zip(requests, outputs):
                responses[r.slot] = o.text
                extras[r.slot] = {"prompt_ids": o.prompt_ids, "response_ids": o.response_ids,
                                  "logprobs": o.logprobs, "finish_reason": o.finish_reason}
                n_tokens += len(o.response_ids)
            t0 = time.perf_counter()
            manager.step(responses, extras)
            t_env += time.perf_counter() - t0
            turn += 1
        return manager.trajectories(), {"generate": t_gen, "env": t_env, "generated_tokens": float(n_tokens)}

    # ------------------------------------------------------------------------------------------
    # forward passes on a turn batch
    # ------------------------------------------------------------------------------------------

    def _micro_size(self, section: Any) -> int:
        return int(cfg_get(section, "micro_batch_size", 16))

    @torch.no_grad()
    def compute_logprobs(self, batch: TurnBatch, model: torch.nn.Module) -> Tensor:
        """Teacher-forced log-probs ``[N, L]`` of the batch's responses under ``model`` (no grad)."""
        temperature = float(cfg_get(self.rollout_cfg, "temperature", 1.0))
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
        index = torch.arange(len(batch))
        micro = self._micro_size(self.actor_cfg)
        order = torch.argsort(batch.n_tokens()[index], stable=True)
        for start in range(0, len(order), micro):
            rows = order[start : start + micro]
            mb = batch.select(rows)
            ids, mask = mb.input_ids()
            logp, _ = response_logprobs(
                model, ids.to(self.device), mask.to(self.device), mb.prompt_width, mb.response_ids.to(self.device),
                temperature=temperature,
            )
            out[rows, : logp.shape[1]] = logp.float().cpu()
        return out

    def switch_continuation_ids(self) -> tuple[Tensor, Tensor]:
        """Token ids ``[2, C]`` and mask ``[2, C]`` of :data:`SWITCH_CONTINUATIONS` (row 0 SWITCH, row 1 KEEP).

        Each text is tokenized on its own, without special tokens, as the policy generates it after the prompt;
        the two rows are right-padded to the longer one.
        """
        if self._switch_cont is None:
            from hiper.trainer.turn_batch import pad_token_lists

            seqs = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in SWITCH_CONTINUATIONS]
            if any(not s for s in seqs) or seqs[0] == seqs[1]:
                raise ValueError(f"the tokenizer cannot tell {SWITCH_CONTINUATIONS} apart: {seqs}")
            self._switch_cont = pad_token_lists(seqs, self.pad_id)
        return self._switch_cont

    @torch.no_grad()
    def compute_switch_prob(self, batch: TurnBatch, model: torch.nn.Module | None = None) -> Tensor:
        """beta ``[N]``: P(SWITCH | s_t, o_{t-1}) under ``model`` (default the policy), normalised over SWITCH/KEEP.

        Both :data:`SWITCH_CONTINUATIONS` are teacher-forced after each row's prompt; with ``log p_S``/``log p_K``
        the summed log-probs of their full token sequences (at the rollout temperature, like the old log-probs),
        ``beta = p_S / (p_S + p_K) = sigmoid(log p_S - log p_K)``. One prompt forward per micro-batch fills a KV
        cache that both continuations reuse (rows interleaved S, K), so a turn costs one prompt encoding plus
        ``2 C`` tokens. No grad: beta is a fixed coefficient of the switch advantage, like the old log-probs.
        """
        model = self.policy if model is None else model
        decoder, head = backbone_and_head(model)
        temperature = float(cfg_get(self.rollout_cfg, "temperature", 1.0))
        cont_ids, cont_mask = self.switch_continuation_ids()
        out = torch.zeros(len(batch), dtype=torch.float32)
        micro = self._micro_size(self.actor_cfg)
        order = torch.argsort(batch.prompt_mask.sum(1), stable=True)
        for start in range(0, len(order), micro):
            rows = order[start : start + micro]
            mb = batch.select(rows)
            p_ids, p_mask = mb.prompt_ids.to(self.device), mb.prompt_mask.long().to(self.device)
            h_prompt, cache = encode_with_cache(decoder, p_ids, p_mask, p_ids.shape[1])
            n = len(rows)
            ids = cont_ids.to(self.device).repeat(n, 1)  # [2n, C]: rows 2i (SWITCH), 2i + 1 (KEEP) of prompt i
            mask = cont_mask.to(self.device).repeat(n, 1)
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

    @torch.no_grad()
    def compute_values(self, batch: TurnBatch) -> dict[str, Tensor]:
        """Critic values ``{head: [N]}`` at the read positions (no grad).

        When the batch carries KEEP continuations (paper switch mode, :meth:`TurnBatch.attach_keep_continuations`)
        the result also has ``low_keep`` = V^low(s_t, o_{t-1}), computed in the same micro-batch forward.
        """
        assert self.critic is not None
        with_keep = batch.keep_ids is not None
        heads = list(self.critic.heads) + (["low_keep"] if with_keep else [])
        out: dict[str, Tensor] = {h: torch.zeros(len(batch)) for h in heads}
        micro = self._micro_size(self.critic_cfg)
        order = torch.argsort(batch.n_tokens(), stable=True)
        for start in range(0, len(order), micro):
            rows = order[start : start + micro]
            mb = batch.select(rows)
            ids, mask = mb.input_ids()
            keep = {}
            if with_keep:
                assert mb.keep_ids is not None and mb.keep_mask is not None
                keep = {"keep_ids": mb.keep_ids.to(self.device), "keep_mask": mb.keep_mask.long().to(self.device)}
            vals = self.critic.read_values(ids.to(self.device), mask.to(self.device), mb.prompt_width,
                                           mb.v_low_pos.to(self.device), **keep)
            for h, v in vals.items():
                out[h][rows] = v.float().cpu()
        return out

    # ------------------------------------------------------------------------------------------
    # advantages
    # ------------------------------------------------------------------------------------------

    def advantage_config(self) -> Any:
        """The estimator's config dataclass built from ``algorithm`` (+ the actor's invalid penalty)."""
        from hiper.advantage import config as adv_config

        classes = {
            "hae": adv_config.HAEConfig, "gae": adv_config.GAEConfig, "grpo": adv_config.GRPOConfig,
            "rloo": adv_config.RLOOConfig, "gigpo": adv_config.GiGPOConfig,
        }
        if self.estimator_name not in classes:
            raise ValueError(f"unknown adv_estimator {self.estimator_name!r}; known: {sorted(classes)}")
        cls = classes[self.estimator_name]
        values: dict[str, Any] = {}
        for key in ("gamma", "lam"):
            if cfg_get(self.algo_cfg, key, None) is not None:
                values[key] = float(cfg_get(self.algo_cfg, key))
        for key in ("keep_penalty", "keep_penalty_mode", "keep_consistency_penalty", "keep_penalty_skip_first"):
            v = cfg_get(_section(self.algo_cfg, "hae"), key, None)
            if v is not None:
                values[key] = v
        values.update(_as_dict(_section(self.algo_cfg, self.estimator_name)))
        if self.estimator_name == "hae":
            values["switch_mode"] = self.switch_mode
        values["invalid_penalty"] = float(cfg_get(self.actor_cfg, "invalid_action_penalty_coef", 0.0))
        names = {f.name for f in fields(cls)}
        clean = {}
        for k, v in values.items():
            if k in names and v is not None:
                f_type = next(f.type for f in fields(cls) if f.name == k)
                clean[k] = float(v) if f_type == "float" else v
        return cls(**clean)

    def compute_advantages(self, batch: TurnBatch) -> dict[str, float]:
        """Fill ``batch.advantages``/``loss_mask`` (token level) and ``returns``/``value_mask`` (per row)."""
        from hiper import advantage

        scale = float(cfg_get(self.algo_cfg, "reward_scale", 1.0))
        inputs = batch.advantage_inputs(batch.old_values, scale)
        out = advantage.get(self.estimator_name)(inputs, self.advantage_config())
        batch.advantages, batch.loss_mask, per_row = batch.token_advantages(out)
        flat = batch.flat
        extras = getattr(out, "extras", None) or {}
        raw = {"action": "adv_low_raw", "subgoal": "adv_high_raw", "switch": "adv_term_raw"}
        batch.turn_advantages = {role: flat(extras[key]).float() for role, key in raw.items() if key in extras}
        batch.returns = {h: flat(r).float() for h, r in (out.returns or {}).items()}
        batch.value_mask = {h: flat(m).bool() for h, m in (out.value_mask or {}).items()}
        metrics: dict[str, float] = {}
        roles = (("action", per_row["action"], batch.action_mask.any(1)),
                 ("subgoal", per_row["subgoal"], batch.subgoal_mask.any(1) & per_row["subgoal_in_loss"]),
                 ("switch", per_row["switch"], batch.switch_mask.any(1)))
        for role, a, m in roles:
            if bool(m.any()):
                x = a[m].double()
                metrics.update({f"adv/{role}_mean": float(x.mean()), f"adv/{role}_std": float(x.std(unbiased=False)),
                                f"adv/{role}_min": float(x.min()), f"adv/{role}_max": float(x.max()),
                                f"adv/{role}_n": float(m.sum())})
        for k, v in (getattr(out, "metrics", None) or {}).items():
            metrics[f"adv/{k}"] = float(v)
        if self.paper_mode:
            metrics.update(self.switch_metrics(batch))
        for h, ret in batch.returns.items():
            m = batch.value_mask.get(h)
            if m is not None and h in batch.old_values and bool(m.any()):
                metrics[f"critic/explained_var_{h}"] = ppo.explained_variance(batch.old_values[h], ret, m)
                metrics[f"critic/return_mean_{h}"] = float(ret[m].mean())
                metrics[f"critic/value_mean_{h}"] = float(batch.old_values[h][m].mean())
        return metrics

    @staticmethod
    def switch_metrics(batch: TurnBatch) -> dict[str, float]:
        """Paper switch-mode diagnostics over the batch's turns (``switch/...``).

        ``beta_mean`` (mean P(SWITCH)), ``beta_on_switch``/``beta_on_keep`` (mean beta on turns that did / did not
        start a segment), ``gain_abs_mean``/``gain_mean`` (|VH_t - VL^keep_t| and VH_t - VL^keep_t, the switching
        gain), ``keep_exact_rate`` (share of turns whose response starts with the exact KEEP continuation
        tokens), ``low_keep_gap_exact`` (mean |VL^keep_t - VL_t| on those turns: float noise, ~1e-6; a larger
        value means the two passes disagree), and the raw switch advantage (q_t - beta_t)(VH_t - VL^keep_t):
        ``adv_raw_mean/std/min/max``.
        """
        out: dict[str, float] = {}
        if batch.switch_prob is None or "low_keep" not in batch.old_values:
            return out
        beta = batch.switch_prob.double()
        q = batch.boundary
        out["switch/beta_mean"] = float(beta.mean())
        if bool(q.any()):
            out["switch/beta_on_switch"] = float(beta[q].mean())
        if bool((~q).any()):
            out["switch/beta_on_keep"] = float(beta[~q].mean())
        exact = batch.exact_keep()
        out["switch/keep_exact_rate"] = float(exact.double().mean())
        if bool(exact.any()):
            gap = (batch.old_values["low_keep"] - batch.old_values["low"]).abs()[exact]
            out["switch/low_keep_gap_exact"] = float(gap.double().mean())
        gain = (batch.old_values["high"] - batch.old_values["low_keep"]).double()
        out["switch/gain_abs_mean"] = float(gain.abs().mean())
        out["switch/gain_mean"] = float(gain.mean())
        adv = batch.turn_advantages.get("switch")
        if adv is not None and len(adv):
            a = adv.double()
            out.update({"switch/adv_raw_mean": float(a.mean()), "switch/adv_raw_std": float(a.std(unbiased=False)),
                        "switch/adv_raw_min": float(a.min()), "switch/adv_raw_max": float(a.max())})
        return out

    # ------------------------------------------------------------------------------------------
    # updates
    # ------------------------------------------------------------------------------------------

    def _minibatches(self, n: int, size: int, gen: torch.Generator) -> list[Tensor]:
        perm = torch.randperm(n, generator=gen)
        size = max(1, min(size, n))
        return [perm[s : s + size] for s in range(0, n, size)]

    def update_critic(self, batch: TurnBatch, gen: torch.Generator) -> dict[str, float]:
        """Clipped value loss per head at its read positions; one pass per PPO epoch over mini-batches."""
        assert self.critic is not None and self.critic_opt is not None
        cliprange = cfg_get(self.critic_cfg, "cliprange_value", None)
        cliprange = None if cliprange is None else float(cliprange)
        coefs = {"low": 1.0, "turn": 1.0, "high": float(cfg_get(self.critic_cfg, "high_value_coef", 1.0)),
                 "term": float(cfg_get(self.critic_cfg, "term_value_coef", 1.0))}
        params = self.critic.trainable_parameters()
        grad_clip = cfg_get(self.critic_cfg, "grad_clip", 1.0)
        heads = [h for h in self.critic.heads if h in batch.returns and h in batch.value_mask]
        sums = {f"critic/value_loss_{h}": 0.0 for h in heads}
        counts = {h: 0 for h in heads}
        steps = skipped = 0
        norms = []
        self.critic.train()
        for _ in range(int(cfg_get(self.actor_cfg, "ppo_epochs", 1))):
            for mb_rows in self._minibatches(len(batch), int(cfg_get(self.critic_cfg, "mini_batch_size",
                                                                     cfg_get(self.actor_cfg, "mini_batch_size", 64))), gen):
                n_head = {h: int(batch.value_mask[h][mb_rows].sum()) for h in heads}
                finite = True
                for mb in batch.micro_batches(mb_rows, self._micro_size(self.critic_cfg)):
                    ids, mask = mb.input_ids()
                    vals = self.critic.read_values(ids.to(self.device), mask.to(self.device), mb.prompt_width,
                                                   mb.v_low_pos.to(self.device))
                    loss = torch.zeros((), device=self.device)
                    for h in heads:
                        if n_head[h] == 0:
                            continue
                        vl, _ = ppo.value_loss_terms(
                            vals[h].float(), mb.old_values[h].to(self.device), mb.returns[h].to(self.device),
                            mb.value_mask[h].to(self.device), cliprange,
                        )
                        loss = loss + coefs[h] * vl / n_head[h]
                        sums[f"critic/value_loss_{h}"] += float(vl.detach())
                        counts[h] += int(mb.value_mask[h].sum())
                    if not torch.isfinite(loss):
                        finite = False
                        break
                    if loss.requires_grad:
                        loss.backward()
                stepped, norm = ppo.safe_step(self.critic_opt, params, grad_clip, loss_finite=finite)
                steps += 1
                skipped += not stepped
                norms.append(norm)
        self.critic.eval()
        out = {f"critic/value_loss_{h}": sums[f"critic/value_loss_{h}"] / max(counts[h], 1) for h in heads}
        out["critic/loss"] = sum(out.values())
        out.update({"critic/steps": float(steps), "critic/skipped_steps": float(skipped),
                    "critic/grad_norm": float(np.nanmean(norms)) if norms and not all(map(math.isnan, norms)) else math.nan})
        return out

    def update_actor(self, batch: TurnBatch, gen: torch.Generator) -> dict[str, float]:
        """PPO (dual clip) + entropy + k3 KL, token-mean over the loss mask of each mini-batch."""
        assert batch.advantages is not None and batch.loss_mask is not None and batch.old_logprobs is not None
        params = [p for p in self.policy.parameters() if p.requires_grad]
        temperature = float(cfg_get(self.rollout_cfg, "temperature", 1.0))
        grad_clip = cfg_get(self.actor_cfg, "grad_clip", 1.0)
        want_entropy = True
        totals: dict[str, float] = {}
        n_total = 0
        steps = skipped = 0
        norms = []
        self.policy.train()
        for _ in range(int(cfg_get(self.actor_cfg, "ppo_epochs", 1))):
            for mb_rows in self._minibatches(len(batch), int(cfg_get(self.actor_cfg, "mini_batch_size", 64)), gen):
                n_tok = int(batch.loss_mask[mb_rows].sum())
                if n_tok == 0:
                    continue
                finite = True
                for mb in batch.micro_batches(mb_rows, self._micro_size(self.actor_cfg)):
                    ids, mask = mb.input_ids()
                    logp, entropy = response_logprobs(
                        self.policy, ids.to(self.device), mask.to(self.device), mb.prompt_width,
                        mb.response_ids.to(self.device), temperature=temperature, with_entropy=want_entropy,
                    )
                    ref = mb.ref_logprobs.to(self.device) if mb.ref_logprobs is not None else None
                    loss, stats = ppo.actor_loss_sum(
                        logp, mb.old_logprobs.to(self.device), mb.advantages.to(self.device),
                        mb.loss_mask.to(self.device), self.loss_cfg, entropy=entropy, ref_logp=ref,
                    )
                    loss = loss / n_tok
                    if not torch.isfinite(loss):
                        finite = False
                        break
                    loss.backward()
                    for k, v in stats.items():
                        totals[k] = totals.get(k, 0.0) + float(v)
                    n_total += int(mb.loss_mask.sum())
                stepped, norm = ppo.safe_step(self.actor_opt, params, grad_clip, loss_finite=finite)
                steps += 1
                skipped += not stepped
                norms.append(norm)
        self.policy.eval()
        sync = getattr(self._engine, "sync", None)
        if sync is not None:
            sync()
        out = {f"actor/{k}": v / max(n_total, 1) for k, v in totals.items()}
        out.update({"actor/steps": float(steps), "actor/skipped_steps": float(skipped),
                    "actor/grad_norm": float(np.nanmean(norms)) if norms and not all(map(math.isnan, norms)) else math.nan,
                    "actor/loss_tokens": float(n_total)})
        return out

    # ------------------------------------------------------------------------------------------
    # iteration / eval / train
    # ------------------------------------------------------------------------------------------

    def iteration(self) -> dict[str, Any]:
        """One RL iteration (rollout, critic values, advantages, critic + actor update); returns metrics."""
        self.setup_rl()
        k = self.iteration_count
        times: dict[str, float] = {}
        t_start = time.perf_counter()
        tasks = self.tasks_for_iteration(k)
        group = int(cfg_get(self.env_cfg, "group_size", 1))
        temperature = float(cfg_get(self.rollout_cfg, "temperature", 1.0))
        trajs, rt = self.rollout(self.manager, tasks, group, temperature, seed=_seed_of(self.seed, 1, k))
        times["generate"], times["env"] = rt["generate"], rt["env"]

        t0 = time.perf_counter()
        batch = TurnBatch.from_trajectories(
            trajs, self.table, self.pad_id, max_prompt_length=cfg_get(self.rollout_cfg, "max_prompt_length", None)
        )
        use_rollout = bool(cfg_get(self.actor_cfg, "use_rollout_logprobs", False)) and temperature == 1.0
        if use_rollout and batch.rollout_logprobs is not None:
            # the engine's raw log-probs of the same weights (spec: recomputed by the actor; equal up to
            # float noise at temperature 1): saves one forward pass over the batch
            batch.old_logprobs = batch.rollout_logprobs
        else:
            batch.old_logprobs = self.compute_logprobs(batch, self.policy)
        if self.reference is not None:
            batch.ref_logprobs = self.compute_logprobs(batch, self.reference)
        times["logprob"] = time.perf_counter() - t0
        if self.paper_mode:
            t0 = time.perf_counter()
            batch.switch_prob = self.compute_switch_prob(batch)
            times["switch_prob"] = time.perf_counter() - t0
            batch.attach_keep_continuations(self.tokenizer, self.table, TurnBatch.current_subgoals(trajs))
        t0 = time.perf_counter()
        if self.critic is not None:
            batch.old_values = self.compute_values(batch)
        times["critic"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        metrics = self.compute_advantages(batch)
        times["advantage"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(_seed_of(self.seed, 2, k))
        if self.critic is not None:
            metrics.update(self.update_critic(batch, gen))
        metrics.update(self.update_actor(batch, gen))
        times["update"] = time.perf_counter() - t0
        times["iteration"] = time.perf_counter() - t_start

        metrics.update(self.rollout_metrics(trajs, batch, prefix="train/"))
        metrics.update({f"time/{k_}": v for k_, v in times.items()})
        metrics["perf/generated_tokens_per_s"] = rt["generated_tokens"] / max(times["generate"], 1e-9)
        n_train_tok = float(batch.n_tokens().sum())
        metrics["perf/update_tokens_per_s"] = n_train_tok * int(cfg_get(self.actor_cfg, "ppo_epochs", 1)) / max(
            times["update"], 1e-9)
        metrics["perf/turn_samples"] = float(len(batch))
        self.last_batch = batch
        self.iteration_count += 1
        metrics["iteration"] = self.iteration_count
        self._emit(metrics, self.iteration_count)
        return metrics

    @staticmethod
    def rollout_metrics(trajs: Sequence[Any], batch: TurnBatch | None = None, prefix: str = "") -> dict[str, float]:
        """Success (overall and per task type), reward, length, switch / invalid / keep-consistency rates,
        segment length."""
        from hiper.envs.manager import episode_stats

        st = episode_stats(trajs)
        names = {"length": "episode_length"}
        out = {f"{prefix}{names.get(k, k)}": float(v) for k, v in st.items()
               if k != "per_type" and isinstance(v, (int, float))}
        for t, d in st["per_type"].items():
            out[f"{prefix}success/{t}"] = float(d["success"])
        out[f"{prefix}reward"] = float(np.mean([t.total_reward for t in trajs])) if trajs else 0.0
        n_turns = sum(t.length for t in trajs)
        n_boundaries = sum(1 + sum(bool(x.is_boundary) for x in t.turns[1:]) for t in trajs if t.turns)
        out[f"{prefix}segment_length"] = n_turns / max(n_boundaries, 1)
        if batch is not None:
            out[f"{prefix}response_tokens"] = float(batch.response_mask.sum(1).float().mean())
            out[f"{prefix}prompt_tokens"] = float(batch.prompt_mask.sum(1).float().mean())
        return out

    @torch.no_grad()
    def evaluate(self, n_episodes: int | None = None, temperature: float | None = None,
                 seed_offset: int = 0) -> dict[str, Any]:
        """Held-out evaluation on the fixed ``env.eval_split`` panel; returns ``eval/...`` metrics."""
        tasks = self.eval_tasks(n_episodes, seed_offset)
        temp = float(temperature if temperature is not None else cfg_get(self.rollout_cfg, "eval_temperature", 0.4))
        t0 = time.perf_counter()
        trajs, _ = self.rollout(self.eval_manager, tasks, 1, temp, seed=_seed_of(self.seed, 3, seed_offset))
        out = self.rollout_metrics(trajs, prefix="eval/")
        out["time/eval"] = time.perf_counter() - t0
        return out

    def sft(self) -> dict[str, Any]:
        """SFT warm start on ``sft.episodes`` expert episodes of the train split (before any RL)."""
        from hiper.envs import task_panel
        from hiper.trainer import sft as sft_mod

        t0 = time.perf_counter()
        n = int(cfg_get(self.sft_cfg, "episodes", 32))
        split = str(cfg_get(self.sft_cfg, "split", cfg_get(self.env_cfg, "train_split", "train")))
        tasks = task_panel(self.env_name, split, n=n, seed=_seed_of(self.seed, 11) % (2**31))
        trajs = sft_mod.expert_trajectories(self.manager, tasks)
        examples = sft_mod.examples_from_trajectories(trajs, self.tokenizer)
        if cfg_get(self.sft_cfg, "max_examples", None):
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(_seed_of(self.seed, 12)))
            examples = [examples[int(i)] for i in order[: int(cfg_get(self.sft_cfg, "max_examples"))]]
        before = sft_mod.mean_nll(self.policy, examples, self.pad_id)
        res = sft_mod.sft_train(
            self.policy, examples, self.pad_id,
            epochs=int(cfg_get(self.sft_cfg, "epochs", 1)), lr=float(cfg_get(self.sft_cfg, "lr", 1e-4)),
            batch_size=int(cfg_get(self.sft_cfg, "batch_size", 16)), seed=_seed_of(self.seed, 13),
            micro_batch_size=int(cfg_get(self.sft_cfg, "micro_batch_size", cfg_get(self.sft_cfg, "batch_size", 16))),
            prompt_loss_weight=float(cfg_get(self.sft_cfg, "prompt_loss_weight", 0.0)),
        )
        after = sft_mod.mean_nll(self.policy, examples, self.pad_id)
        self.sft_done = True
        sync = getattr(self._engine, "sync", None)
        if sync is not None:
            sync()
        metrics = {"sft/examples": float(len(examples)), "sft/episodes": float(len(trajs)), "sft/nll_before": before,
                   "sft/nll_after": after, "sft/steps": float(res["steps"]), "sft/skipped": float(res["skipped"]),
                   "time/sft": time.perf_counter() - t0}
        self._emit(metrics, 0)
        return metrics

    def train(self) -> list[dict[str, Any]]:
        """SFT (if ``sft.enabled`` and not done), then RL iterations with periodic held-out evaluation.

        Evaluates before the first RL iteration and after the last one. Returns the metric history.
        """
        if cfg_get(self.sft_cfg, "enabled", False) and not self.sft_done and self.iteration_count == 0:
            self.history.append(self.sft())
        self.setup_rl()
        total = int(cfg_get(self.trainer_cfg, "total_iterations", 10))
        eval_every = int(cfg_get(self.trainer_cfg, "eval_every", 0))
        save_every = int(cfg_get(self.trainer_cfg, "save_every", 0))
        if eval_every and self.iteration_count == 0:
            ev = self.evaluate()
            self._emit(ev, 0)
            self.history.append({"iteration": 0, **ev})
        while self.iteration_count < total:
            m = self.iteration()
            if eval_every and (self.iteration_count % eval_every == 0 or self.iteration_count == total):
                ev = self.evaluate()
                self._emit(ev, self.iteration_count)
                m.update(ev)
            self.history.append(m)
            if save_every and self.iteration_count % save_every == 0:
                self.save_checkpoint()
        return self.history

    def _checkpoint_parts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        models: dict[str, Any] = {"policy": self.policy}
        optimizers: dict[str, Any] = {"actor": self.actor_opt}
        if self.critic is not None:
            models["critic"] = self.critic
            if self.critic_opt is not None:
                optimizers["critic"] = self.critic_opt
        if self.reference is not None:
            models["reference"] = self.reference
        return models, optimizers

    def save_checkpoint(self, output_dir: str | None = None, name: str | None = None) -> Any:
        """Write an atomic checkpoint with :mod:`hiper.trainer.checkpoint` (models, optimizers, RNG, counters).

        Returns the checkpoint folder (``<output_dir>/checkpoints/iter_<k>`` unless ``name`` is given).
        """
        from hiper.trainer import checkpoint

        out = output_dir or cfg_get(self.config, "output_dir", None)
        if not out:
            raise ValueError("no output_dir to write the checkpoint to")
        models, optimizers = self._checkpoint_parts()
        extra = {"sft_done": self.sft_done, "rl_ready": self.rl_ready, "history": list(self.history),
                 "sampler": {"seed": self.seed, "position": self.iteration_count}}
        return checkpoint.save_checkpoint(
            out, iteration=self.iteration_count, models=models, optimizers=optimizers,
            rng=checkpoint.capture_rng_state(), extra=extra, tokenizer=self.tokenizer, config=self.config,
            keep=int(cfg_get(self.trainer_cfg, "keep_checkpoints", 3)), name=name,
        )

    def load_checkpoint(self, path: Any) -> None:
        """Resume from a checkpoint folder (or a run folder: its latest checkpoint) written by :meth:`save_checkpoint`."""
        from hiper.trainer import checkpoint

        info = checkpoint.load_checkpoint(path)
        extra = info["extra"]
        # the policy first: the critic and the reference are built from it before their own weights load
        checkpoint.load_checkpoint(info["path"], models={"policy": self.policy})
        if extra.get("rl_ready"):
            self.setup_rl()
        models, optimizers = self._checkpoint_parts()
        models = {k: v for k, v in models.items() if k in info["models"]}
        checkpoint.load_checkpoint(info["path"], models=models, optimizers=optimizers, restore_rng=True)
        self.iteration_count = int(info["iteration"])
        self.sft_done = bool(extra.get("sft_done", False))
        self.history = list(extra.get("history", []))
        sync = getattr(self._engine, "sync", None)
        if sync is not None:
            sync()

    def _emit(self, metrics: dict[str, Any], step: int) -> None:
        if self.logger is not None:
            self.logger.log(metrics, step)
        for cb in self.callbacks:
            cb(metrics, step)

    # ------------------------------------------------------------------------------------------
    # state (checkpoint / exact resume)
    # ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: models, optimizers, counters, RNG states, history."""
        state: dict[str, Any] = {
            "iteration": self.iteration_count,
            "sft_done": self.sft_done,
            "rl_ready": self.rl_ready,
            "policy": {k: v.detach().clone() for k, v in self.policy.state_dict().items()},
            "actor_opt": self.actor_opt.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
            # tasks of iteration k are a pure function of (seed, k): the sampler position is the iteration
            "sampler": {"seed": self.seed, "position": self.iteration_count},
            "history": list(self.history),
        }
        if self.critic is not None:
            state["critic"] = {k: v.detach().clone() for k, v in self.critic.state_dict().items()}
            state["critic_opt"] = self.critic_opt.state_dict() if self.critic_opt is not None else None
        if self.reference is not None:
            state["reference"] = {k: v.detach().clone() for k, v in self.reference.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output into this (freshly constructed, same-config) trainer."""
        self.policy.load_state_dict(state["policy"])
        if state.get("rl_ready"):
            self.setup_rl()
        self.actor_opt.load_state_dict(state["actor_opt"])
        if "critic" in state:
            if self.critic is None:
                raise ValueError("checkpoint has a critic but this config builds none")
            self.critic.load_state_dict(state["critic"])
            if state.get("critic_opt") is not None and self.critic_opt is not None:
                self.critic_opt.load_state_dict(state["critic_opt"])
        if "reference" in state and self.reference is not None:
            self.reference.load_state_dict(state["reference"])
        self.iteration_count = int(state["iteration"])
        self.sft_done = bool(state.get("sft_done", False))
        self.history = list(state.get("history", []))
        rng = state.get("rng", {})
        if "python" in rng:
            random.setstate(rng["python"])
        if "numpy" in rng:
            np.random.set_state(rng["numpy"])
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        sync = getattr(self._engine, "sync", None)
        if sync is not None:
            sync()

"""The trainer shell: builds what :mod:`hiper.trainer.algorithm` needs from the typed config and runs the loop.

``Trainer(config)`` takes a :class:`~hiper.config.HiperConfig`, or a (partial) nested dict that goes through the
same schema and validation as ``hiper train`` (missing keys take the schema's defaults). It owns the plumbing: models
and optimizers, the generation engine, env managers, task sampling, the SFT warm start, held-out evaluation, logging
and checkpoints. One RL iteration is :func:`hiper.trainer.algorithm.iteration`.

Determinism and exact resume: the tasks of iteration ``k`` and every sampling seed are pure functions of
``(seed, k)`` (:func:`~hiper.rollout.engine.derive_seed`), and a checkpoint stores models, optimizers, RNG states
and counters, so ``2 + 2`` iterations with a checkpoint in between equal 4 straight iterations bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hiper.config.loader import from_dict
from hiper.config.schema import HiperConfig, critic_heads
from hiper.envs import ENV_FAMILIES, import_plugins, make_batch, task_panel
from hiper.envs.base import TaskSpec
from hiper.losses import UpdatesDiverged
from hiper.models.critic import build_critic
from hiper.models.policy import build_policy, make_reference
from hiper.models.tokenizer import build_tokenizer
from hiper.protocol.prompts import PROMPT_PROTOCOL, RENDERERS, chat_prompt
from hiper.protocol.spans import TokenByteTable
from hiper.rollout.engine import GenerationEngine, derive_seed
from hiper.rollout.hf import HFEngine
from hiper.rollout.manager import EnvManager
from hiper.rollout.vllm_engine import VLLMEngine  # imports vllm only when an engine is built
from hiper.trainer import algorithm, checkpoint, forward, guards, metrics, sft
from hiper.trainer.algorithm import EVAL_STREAM, IterationResult, Learner
from hiper.trainer.logging import progress_bar
from hiper.trainer.optim import adamw
from hiper.trainer.samples import iteration_records

#: seed streams of the shell: training-task order per epoch, SFT tasks, SFT example subset, SFT shuffling,
#: trajectory samples, SFT expert noise
TASK_STREAM, SFT_TASK_STREAM, SFT_SUBSET_STREAM, SFT_SHUFFLE_STREAM, SAMPLE_STREAM = 7, 11, 12, 13, 5
SFT_NOISE_STREAM = 14

Logger = Any  # anything with ``log(metrics: dict, step: int)``


def as_config(config: HiperConfig | Mapping[str, Any]) -> HiperConfig:
    """A typed config: a :class:`HiperConfig` as is, a mapping through the schema and its validation."""
    if isinstance(config, HiperConfig):
        return config
    if isinstance(config, Mapping):
        return from_dict(dict(config))
    raise TypeError(f"Trainer takes a HiperConfig or a dict of config sections, got {type(config).__name__}")


class Trainer:
    """SFT warm start + HiPER RL (or a baseline estimator) on one env, CPU or one GPU.

    Args:
        config: the run config (typed, or a dict of sections validated like ``hiper train``'s).
        logger: optional object with ``log(metrics: dict, step: int)``.
        tokenizer: optional pre-built tokenizer (otherwise from ``model.tokenizer`` / ``model.path``).
        callbacks: optional callables ``f(metrics, step)`` called after every iteration / eval.
        samples: optional sink for ``trainer.sample_trajectories`` episode records per iteration (with their credit,
            :mod:`hiper.trainer.samples`); ``hiper train`` appends them to ``trajectories.jsonl`` for ``hiper view``.
    """

    def __init__(self, config: HiperConfig | Mapping[str, Any], logger: Logger = None, tokenizer: Any = None,
                 callbacks: Sequence[Callable[[dict[str, Any], int], None]] = (),
                 samples: Callable[[list[dict[str, Any]]], Any] | None = None) -> None:
        self.config = cfg = as_config(config)
        self.logger = logger
        self.samples = samples
        self.callbacks = list(callbacks)
        self.seed = cfg.seed
        self.device = torch.device(cfg.trainer.device)
        if cfg.trainer.num_threads:
            # tiny CPU models: one intra-op thread avoids oversubscription stalls on small shared machines
            torch.set_num_threads(cfg.trainer.num_threads)
        import_plugins(cfg.env.plugins)  # the run's own envs and prompt families (already imported if validated)
        self.env_name = cfg.env.name
        self.family = ENV_FAMILIES[self.env_name]
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.policy = build_policy(cfg.model, self.tokenizer, seed=self.seed).to(self.device)
        self.policy.eval()
        self.table = TokenByteTable.from_tokenizer(self.tokenizer)
        self.actor_opt = adamw([p for p in self.policy.parameters() if p.requires_grad], cfg.actor.lr,
                                cfg.actor.weight_decay)
        self.critic: Any = None
        self.critic_opt: torch.optim.Optimizer | None = None
        self.reference: torch.nn.Module | None = None
        self.rl_ready = False
        self.sft_done = False
        self.iteration_count = 0
        self._bad_iterations = 0
        self._faults = guards.FaultCounter(cfg.env.name, cfg.env.max_consecutive_faults)
        self.best_eval = float("-inf")
        self.history: list[dict[str, Any]] = []
        self.last: IterationResult | None = None
        self._engine: GenerationEngine | None = None
        self._managers: dict[str, EnvManager] = {}
        self._train_pool: list[TaskSpec] | None = None

    # ------------------------------------------------------------------------------------------ construction

    @property
    def paper_mode(self) -> bool:
        """HAE with ``switch_mode=paper``: the iteration also computes beta and V^low(s_t, o_{t-1})."""
        return algorithm.paper_mode(self.config)

    def setup_rl(self) -> None:
        """Build the critic (from the current, e.g. SFT-ed, policy) and the frozen KL reference."""
        if self.rl_ready:
            return
        cfg = self.config
        heads = critic_heads(cfg)
        if heads and cfg.critic.enabled:
            self.critic = build_critic(cfg.critic, self.policy, heads).to(self.device)
            self.critic.eval()
            self.critic_opt = adamw(self.critic.trainable_parameters(), cfg.critic.lr, cfg.critic.weight_decay)
        if cfg.actor.kl_coef > 0:
            self.reference = make_reference(self.policy).to(self.device)
        self.rl_ready = True

    @property
    def engine(self) -> GenerationEngine:
        """The generation engine of ``rollout.engine``: ``hf`` (the training model itself) or ``vllm`` (its own copy
        of the weights, refreshed by ``engine.sync()`` after each update)."""
        if self._engine is None:
            if self.config.rollout.engine == "vllm":
                if not self.config.model.path:
                    raise ValueError("rollout.engine=vllm needs model.path (a checkpoint vLLM can load)")
                engine = VLLMEngine.from_pretrained(self.config.model.path, tokenizer=self.tokenizer,
                                                    source=self.policy)
                engine.sync()  # the policy may already differ from model.path (SFT, resume, LoRA)
                self._engine = engine
            else:
                self._engine = HFEngine(self.policy, self.tokenizer, max_batch_size=self.config.rollout.batch_size,
                                       lean=self.config.rollout.lean_decode)
        return self._engine

    def learner(self) -> Learner:
        """The models, optimizers and engine an iteration uses (built on first use)."""
        self.setup_rl()
        cont = forward.switch_continuation_ids(self.tokenizer, self.pad_id) if self.paper_mode else None
        return Learner(policy=self.policy, actor_opt=self.actor_opt, critic=self.critic, critic_opt=self.critic_opt,
                       reference=self.reference, tokenizer=self.tokenizer, table=self.table, engine=self.engine,
                       device=self.device, switch_continuations=cont, faults=self._faults)

    def manager(self, purpose: str = "train") -> EnvManager:
        """The env manager for ``train`` or ``eval`` rollouts (one each, built on first use)."""
        if purpose not in self._managers:
            env = self.config.env
            kwargs = {**env.kwargs, "max_steps": env.max_steps}
            self._managers[purpose] = EnvManager(make_batch(env.name, n_workers=env.n_workers, plugins=env.plugins,
                                                            **kwargs),
                                                 family=self.family, history_length=env.history_length,
                                                 renderer=RENDERERS[env.prompt], switch_hint=env.switch_hint,
                                                 protocol=PROMPT_PROTOCOL[env.prompt], prompt_fits=self.prompt_fits)
        return self._managers[purpose]

    def prompt_fits(self, text: str) -> bool:
        """Whether ``text``, chat-templated and tokenized as the engine will, fits ``rollout.max_prompt_length``
        (the env manager drops the oldest history pairs until it does)."""
        limit = self.config.rollout.max_prompt_length
        chat = chat_prompt(self.tokenizer, text)
        if len(chat.encode()) <= limit:  # every token has at least one byte: no need to tokenize
            return True
        return len(self.tokenizer.encode(chat, add_special_tokens=False)) <= limit

    # ------------------------------------------------------------------------------------------ tasks

    def train_pool(self) -> list[TaskSpec]:
        """The training task pool: ``env.train_pool_size`` tasks of ``env.train_split`` (fixed per seed)."""
        if self._train_pool is None:
            env = self.config.env
            try:
                pool = task_panel(env.name, env.train_split, n=env.train_pool_size, seed=self.seed)
            except ValueError:  # the split is smaller than the pool size: use all of it
                pool = task_panel(env.name, env.train_split, n=None, seed=self.seed)
            if not pool:
                raise ValueError(f"env {env.name!r} has no tasks in its train split")
            self._train_pool = pool
        return self._train_pool

    def tasks_for_iteration(self, iteration: int) -> list[TaskSpec]:
        """The distinct tasks of iteration ``iteration`` (a pure function of seed and iteration).

        ``env.n_envs`` trajectories = ``n_envs // group_size`` tasks x ``group_size``. Tasks are read from a
        per-epoch permutation of the pool, so every task is seen once per epoch.
        """
        pool = self.train_pool()
        n_tasks = max(1, self.config.env.n_envs // self.config.env.group_size)
        out = []
        for k in range(n_tasks):
            epoch, offset = divmod(iteration * n_tasks + k, len(pool))
            gen = torch.Generator().manual_seed(derive_seed(self.seed, TASK_STREAM, epoch))
            out.append(pool[int(torch.randperm(len(pool), generator=gen)[offset])])
        return out

    def eval_tasks(self, n: int | None = None, seed_offset: int = 0) -> list[TaskSpec]:
        """Held-out panel: the first ``n`` (default ``env.eval_episodes``) tasks of ``env.eval_split``."""
        env = self.config.env
        return task_panel(env.name, env.eval_split, n=env.eval_episodes if n is None else n,
                          seed=env.eval_seed + seed_offset)

    # ------------------------------------------------------------------------------------------ the loop

    def iteration(self) -> dict[str, Any]:
        """One RL iteration (:func:`hiper.trainer.algorithm.iteration`); returns its metrics."""
        learner = self.learner()
        k = self.iteration_count
        self.last = algorithm.iteration(self.config, learner, self.manager("train"), self.tasks_for_iteration(k), k)
        self.iteration_count += 1
        if self.samples is not None and self.config.trainer.sample_trajectories > 0:
            self.samples(iteration_records(self.last, self.tokenizer, n=self.config.trainer.sample_trajectories,
                                           iteration=self.iteration_count, env=self.env_name,
                                           seed=derive_seed(self.seed, SAMPLE_STREAM, k)))
        out = {**self.last.metrics, "iteration": self.iteration_count}
        self._check_updates(out)
        self._emit(out, self.iteration_count)
        return out

    @torch.no_grad()
    def evaluate(self, n_episodes: int | None = None, temperature: float | None = None,
                 seed_offset: int = 0) -> dict[str, Any]:
        """Held-out evaluation on the fixed ``env.eval_split`` panel; returns ``eval/...`` metrics."""
        tasks = self.eval_tasks(n_episodes, seed_offset)
        temp = self.config.rollout.eval_temperature if temperature is None else temperature
        t0 = time.perf_counter()
        trajs, _ = algorithm.rollout(self.config, self.learner(), self.manager("eval"), tasks, 1, temp,
                                     seed=derive_seed(self.seed, EVAL_STREAM, seed_offset))
        out = metrics.rollout_metrics(trajs, prefix="eval/")
        out["time/eval"] = time.perf_counter() - t0
        return out

    def sft(self) -> dict[str, Any]:
        """SFT warm start on ``sft.episodes`` expert episodes of the train split (before any RL)."""
        s = self.config.sft
        t0 = time.perf_counter()
        split = s.split or self.config.env.train_split
        tasks = task_panel(self.env_name, split, n=s.episodes, seed=derive_seed(self.seed, SFT_TASK_STREAM) % (2**31))
        trajs = sft.expert_trajectories(self.manager("train"), tasks, noise=s.noise,
                                        seed=derive_seed(self.seed, SFT_NOISE_STREAM))
        examples = sft.examples_from_trajectories(trajs, self.tokenizer)
        if s.max_examples:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, SFT_SUBSET_STREAM))
            examples = [examples[int(i)] for i in torch.randperm(len(examples), generator=gen)[: s.max_examples]]
        # the before/after NLL is a diagnostic: an evenly spaced subset keeps it cheap
        stride = max(1, -(-len(examples) // s.nll_examples)) if s.nll_examples > 0 else 1
        probe = examples[::stride]
        before = sft.mean_nll(self.policy, probe, self.pad_id)
        n_steps = s.epochs * -(-len(examples) // s.batch_size)
        with progress_bar("SFT steps", min(n_steps, s.max_steps or n_steps), not self.config.trainer.progress) as bar:
            res = sft.sft_train(self.policy, examples, self.pad_id, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size,
                                seed=derive_seed(self.seed, SFT_SHUFFLE_STREAM), micro_batch_size=s.micro_batch_size,
                                prompt_loss_weight=s.prompt_loss_weight, max_steps=s.max_steps,
                                max_bad_steps=self.config.trainer.max_bad_updates, on_step=bar,
                                parallel=self.config.trainer.parallel_phases)
        after = sft.mean_nll(self.policy, probe, self.pad_id)
        self.sft_done = True
        self._sync_engine()
        out = {"sft/examples": float(len(examples)), "sft/episodes": float(len(trajs)), "sft/nll_before": before,
               "sft/perturbed_turns": float(sum(bool(t.extras.get("perturbed")) for tr in trajs for t in tr.turns)),
               "sft/expert_success": sum(tr.won for tr in trajs) / max(len(trajs), 1),
               "sft/nll_after": after, "sft/steps": float(res["steps"]), "sft/skipped": float(res["skipped"]),
               "time/sft": time.perf_counter() - t0}
        self._emit(out, 0)
        return out

    def train(self) -> list[dict[str, Any]]:
        """SFT (if ``sft.enabled`` and not done), then RL iterations with periodic held-out evaluation.

        Evaluates before the first RL iteration and after the last one. Returns the metric history.
        """
        tr = self.config.trainer
        if self.config.sft.enabled and not self.sft_done and self.iteration_count == 0:
            self.history.append(self.sft())
        self.setup_rl()
        if tr.eval_every and self.iteration_count == 0:
            ev = self.evaluate()
            self._emit(ev, 0)
            self.history.append({"iteration": 0, **ev})
        with progress_bar("RL iterations", tr.total_iterations, not tr.progress) as bar:
            bar(self.iteration_count)
            while self.iteration_count < tr.total_iterations:
                m = self.iteration()
                if tr.eval_every and (self.iteration_count % tr.eval_every == 0
                                      or self.iteration_count == tr.total_iterations):
                    ev = self.evaluate()
                    self._emit(ev, self.iteration_count)
                    m.update(ev)
                self.history.append(m)
                if tr.save_every and self.iteration_count % tr.save_every == 0:
                    self.save_checkpoint()
                bar(1)
        return self.history

    # ------------------------------------------------------------------------------------------ persistence

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

    def save_checkpoint(self, output_dir: str | None = None, name: str | None = None,
                        update_latest: bool = True) -> Path:
        """Write an atomic checkpoint with :mod:`hiper.trainer.checkpoint` (models, optimizers, RNG, counters).

        Returns the checkpoint folder (``<output_dir>/checkpoints/iter_<k>`` unless ``name`` is given);
        ``update_latest=False`` leaves the ``latest`` pointer (the resume point) alone.
        """
        models, optimizers = self._checkpoint_parts()
        extra = {"sft_done": self.sft_done, "rl_ready": self.rl_ready, "history": list(self.history),
                 "sampler": {"seed": self.seed, "position": self.iteration_count}, "best_eval": self.best_eval}
        return checkpoint.save_checkpoint(
            output_dir or self.config.output_dir, iteration=self.iteration_count, models=models,
            optimizers=optimizers, rng=checkpoint.capture_rng_state(), extra=extra, tokenizer=self.tokenizer,
            config=self.config, keep=self.config.trainer.keep_checkpoints, name=name, update_latest=update_latest,
        )

    def save_best(self, metrics: dict[str, Any], step: int = 0) -> Path | None:
        """Save ``checkpoints/best`` when ``eval/success`` in ``metrics`` beats every earlier evaluation (the
        official ``_save_best_checkpoint``); a callback of ``hiper train``. Never moves ``latest``."""
        value = metrics.get("eval/success")
        if value is None or value <= self.best_eval:
            return None
        self.best_eval = float(value)
        return self.save_checkpoint(name=checkpoint.BEST, update_latest=False)

    def load_checkpoint(self, path: str | Path, verify: bool = True) -> None:
        """Resume from a checkpoint folder (or a run folder: its latest checkpoint) written by :meth:`save_checkpoint`;
        with ``verify`` its files are checked against its manifest first (:class:`~hiper.trainer.checkpoint.CheckpointCorrupt`)."""
        info = checkpoint.load_checkpoint(path, verify=verify)
        extra = info["extra"]
        # the policy first: the critic and the reference are built from it before their own weights load
        checkpoint.load_checkpoint(info["path"], models={"policy": self.policy}, verify=False)  # verified above
        if extra.get("rl_ready"):
            self.setup_rl()
        models, optimizers = self._checkpoint_parts()
        models = {k: v for k, v in models.items() if k in info["models"]}
        checkpoint.load_checkpoint(info["path"], models=models, optimizers=optimizers, restore_rng=True, verify=False)
        self.iteration_count = int(info["iteration"])
        self.sft_done = bool(extra.get("sft_done", False))
        self.history = list(extra.get("history", []))
        self.best_eval = float(extra.get("best_eval", float("-inf")))
        self._sync_engine()

    def _check_updates(self, metrics: dict[str, Any]) -> None:
        """Count iterations whose optimizer steps were all rolled back (``train/rolled_back_iterations``); stop the
        run with :class:`~hiper.losses.UpdatesDiverged` after ``trainer.max_bad_updates`` in a row."""
        failed = [m for m in ("actor", "critic")
                  if metrics.get(f"{m}/steps", 0) > 0 and metrics[f"{m}/skipped_steps"] == metrics[f"{m}/steps"]]
        self._bad_iterations = self._bad_iterations + 1 if failed else 0
        metrics["train/consecutive_failed_iterations"] = float(self._bad_iterations)
        limit = self.config.trainer.max_bad_updates
        if self._bad_iterations >= limit:
            lr = ", ".join(f"{m}.lr={getattr(self.config, m).lr:g}" for m in failed)
            raise UpdatesDiverged(f"{limit} iterations in a row had every {'/'.join(failed)} update rolled back "
                                  f"(non-finite loss, gradients or weights): the learning rate ({lr}) is likely too "
                                  "high; lower it and resume from the last checkpoint")

    def _sync_engine(self) -> None:
        if self._engine is not None:
            self._engine.sync()

    def _emit(self, values: dict[str, Any], step: int) -> None:
        if self.logger is not None:
            self.logger.log(values, step)
        for cb in self.callbacks:
            cb(values, step)


__all__ = ["Trainer", "as_config"]

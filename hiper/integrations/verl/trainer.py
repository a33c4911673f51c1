"""``HiPERTrainer``: a verl 0.9.1 v1 trainer mode (``trainer.v1.trainer_mode=hiper_sync``) whose advantage step
is :func:`hiper.integrations.verl.advantage.compute_row_advantages` and whose losses are role-aware.

It subclasses ``PPOTrainerSync`` (colocated trainer and rollout) and changes three things:

* ``_setup``: after verl installs its default losses, ``critic_wg.set_loss_fn(hae_value_loss)`` and
  ``actor_rollout_wg.set_loss_fn(hae_ppo_loss)`` (both ``Dispatch.ONE_TO_ALL``);
* ``_compute_advantage``: reads the batch's turn rows from TransferQueue (``prompts``, ``responses``,
  ``response_mask``, ``extra_fields`` and the critic's ``values``), rebuilds the sessions from the
  ``{uid}_{session}_{turn}`` keys, runs ``hiper.advantage`` (``algorithm.adv_estimator`` = ``hae``, ``gae``,
  ``grpo``, ``rloo`` or ``gigpo``; all bootstrap / group across the turns of a session) and writes back
  ``advantages``, ``returns``, ``loss_mask`` (= ``hae_loss_mask``) and the value-position fields;
* nothing else: old log-probs, reference, values, updates and weight sync are verl's.

verl 0.9.1's ``PPOTrainer`` branches on ``self.trainer_mode == "sync"`` (replay buffer class, single-prompt
dataloader refills, TransferQueue checkpoints, prompt persistence). ``trainer_mode`` is the *registered name*
(``hiper_sync``), so without care verl would run this synchronous trainer with its async code paths; the
class therefore reports ``trainer_mode == "sync"`` to verl and keeps the registered name in
``registered_trainer_mode``.

Not supported (rejected in ``_setup`` with a clear error, never silently ignored): ``algorithm.use_kl_in_reward``
(the KL penalty in the reward; use ``actor.use_kl_loss``), ``algorithm.rollout_correction.rollout_is`` /
``rollout_rs`` (verl applies them inside its own advantage step), on-policy distillation (its actor loss
would be replaced) and ``algorithm.hae.switch_mode=paper`` (its beta and V^low-on-KEEP need forward passes over
the SWITCH/KEEP continuations that this trainer does not run; the built-in trainer does).

Three-head critic (``hiper.critic_heads: 3``, the default as in the paper; verl 0.9.1 + FSDP critic only): ``_setup`` runs
:func:`hiper.integrations.verl.critic_heads.configure_critic`, which writes ``num_labels: 3`` and
``hiper_critic_heads: 3`` into ``critic.model.override_config``; the plugin's wrapper in the critic workers then
builds a 3-channel critic, and the values reach TransferQueue as ``[L, 3]`` per row. verl's
``compute_data_metrics`` cannot read 3-channel values, so ``_compute_metrics`` runs verl's metrics without the
value block and logs ``critic/values/{low,high,term}/{mean,max,min}`` itself.

Config (all optional, defaults in brackets): ``algorithm.adv_estimator`` [hae], ``algorithm.gamma``/``lam``,
``algorithm.hae.*`` (``lam_seg``, ``keep_penalty`` ...), ``hiper.reward_scale`` [1.0],
``hiper.invalid_action_penalty_coef`` [0.1], ``hiper.critic_heads`` [3; 1 = one head read at two positions], ``hiper.high_value_coef`` /
``hiper.term_value_coef`` [1.0]. ``critic.enable=true`` is required for ``hae`` and ``gae`` (verl only
auto-enables the critic for its own ``gae``).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from hiper.advantage import get as get_estimator
from hiper.integrations.verl.advantage import CHANNELS, compute_row_advantages, estimator_config
from hiper.integrations.verl.convert import rows_from_tensordict
from hiper.integrations.verl.critic_heads import configure_critic
from hiper.integrations.verl.losses import hae_ppo_loss, hae_value_loss

logger = logging.getLogger(__name__)

TRAINER_NAME = "hiper_sync"
PAPER_SWITCH_MESSAGE = (
    "algorithm.hae.switch_mode=paper: its switch advantage (q - beta)(V^high - V^low_keep) needs beta (the actor's "
    "P(SWITCH) over the SWITCH/KEEP continuations) and V^low on the KEEP continuation, extra forward passes the "
    "verl trainer does not run. It is supported by the built-in trainer (hiper train "
    "algorithm.hae.switch_mode=paper). On verl use switch_mode=code: with hiper.critic_heads=3 "
    "the term head is its own channel (the official code path); with hiper.critic_heads=1 V^term is "
    "the single head read at response position 0, shared with V^high"
)

try:
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync as _Base

    HAVE_VERL = True
except Exception:  # noqa: BLE001 - no verl (or no TransferQueue): the module stays importable on CPU
    _Base = object  # type: ignore[assignment,misc]
    HAVE_VERL = False


def hiper_settings(config: Any) -> dict[str, Any]:
    """The trainer's hiper settings from a verl config (``hiper`` section + ``algorithm``)."""

    def get(obj: Any, key: str, default: Any) -> Any:
        try:
            val = obj.get(key, default) if obj is not None else default
        except Exception:  # noqa: BLE001
            val = default
        return default if val is None else val

    hiper = get(config, "hiper", {})
    algorithm = get(config, "algorithm", {})
    estimator = str(get(algorithm, "adv_estimator", "hae"))
    critic_heads = int(get(hiper, "critic_heads", 3))  # recipes/verl/hiper_base.yaml: the paper's three heads
    if critic_heads not in (1, 3):
        raise ValueError(
            f"hiper.critic_heads must be 1 (single head, position-read) or 3, got {critic_heads}"
        )
    return {
        "estimator": estimator,
        "estimator_config": estimator_config(
            estimator, algorithm, invalid_penalty=float(get(hiper, "invalid_action_penalty_coef", 0.1))
        ),
        "reward_scale": float(get(hiper, "reward_scale", 1.0)),
        "critic_heads": critic_heads,
        "value_coefs": {
            "low": 1.0,
            "high": float(get(hiper, "high_value_coef", 1.0)),
            "term": float(get(hiper, "term_value_coef", 1.0)),
        },
    }


def unsupported_settings(config: Any) -> list[str]:
    """verl settings hiper_sync does not implement (each would otherwise be silently ignored)."""

    def get(obj: Any, key: str) -> Any:
        try:
            return obj.get(key, None) if obj is not None else None
        except Exception:  # noqa: BLE001
            return None

    algorithm = get(config, "algorithm")
    problems = []
    if get(algorithm, "use_kl_in_reward"):
        problems.append("algorithm.use_kl_in_reward=true (use actor_rollout_ref.actor.use_kl_loss instead)")
    correction = get(algorithm, "rollout_correction")
    for key in ("rollout_is", "rollout_rs"):
        if get(correction, key) is not None:
            problems.append(f"algorithm.rollout_correction.{key}={get(correction, key)}")
    distillation = get(config, "distillation")
    if get(distillation, "enabled"):
        problems.append("distillation (its actor loss would be replaced by hae_ppo_loss)")
    estimator = get(algorithm, "adv_estimator") or "hae"
    if str(estimator) == "token_gae":  # verl's own estimator already is verl-agent's token-level PPO
        problems.append("algorithm.adv_estimator=token_gae (it is verl's own token-level GAE: run "
                        "algorithm.adv_estimator=gae on verl's default trainer with a turn-level episode reward)")
    if str(estimator) == "hae" and str(get(get(algorithm, "hae"), "switch_mode") or "code") == "paper":
        problems.append(PAPER_SWITCH_MESSAGE)
    return problems


def channel_value_metrics(values: list[Any]) -> dict[str, float]:
    """``critic/values/{low,high,term}/{mean,max,min}`` over every response position of rows ``[L_i, 3]``."""
    import torch


    if not values:
        return {}
    flat = torch.cat([v.reshape(-1, v.shape[-1]) for v in values]).float()
    if flat.shape[-1] != 3:
        raise ValueError(f"three-head critic values must be [L, 3] per row, got [..., {flat.shape[-1]}]")
    out = {}
    for head, c in CHANNELS.items():
        col = flat[:, c]
        out.update({f"critic/values/{head}/mean": float(col.mean()), f"critic/values/{head}/max": float(col.max()),
                    f"critic/values/{head}/min": float(col.min())})  # fmt: skip
    return out


class HiPERTrainer(_Base):  # type: ignore[misc,valid-type]
    """v1 sync trainer with hiper advantages and role-aware losses (see the module docstring)."""

    #: the name this class is registered under (``trainer.v1.trainer_mode``); verl sees ``"sync"``.
    registered_trainer_mode: str = TRAINER_NAME

    @property
    def trainer_mode(self) -> str:
        """What verl's ``PPOTrainer`` compares with ``"sync"``: this trainer is synchronous."""
        return "sync"

    @trainer_mode.setter
    def trainer_mode(self, value: str) -> None:  # PPOTrainer.__init__ assigns the configured name
        self.registered_trainer_mode = str(value)

    def _setup(self) -> None:
        self._hiper = hiper_settings(self.config)
        est = self._hiper["estimator"]
        if get_estimator(est).needs_critic and not self.use_critic:
            raise ValueError(f"algorithm.adv_estimator={est} needs a critic: set critic.enable=true")
        problems = unsupported_settings(self.config)
        if problems:
            raise ValueError(
                f"trainer.v1.trainer_mode={TRAINER_NAME} does not support: " + "; ".join(problems)
            )
        if self.use_critic:  # before super()._setup() builds the critic worker config from config.critic
            configure_critic(self.config, self._hiper["critic_heads"])
        super()._setup()
        from verl.utils.config import omega_conf_to_dataclass


        if self.use_critic:
            critic_cfg = omega_conf_to_dataclass(self.config.critic)
            self.critic_wg.set_loss_fn(
                partial(hae_value_loss, config=critic_cfg, critic_heads=self._hiper["critic_heads"])
            )
        actor_cfg = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        self.actor_rollout_wg.set_loss_fn(partial(hae_ppo_loss, config=actor_cfg))
        logger.info("hiper: estimator=%s critic_heads=%s", est, self._hiper["critic_heads"])

    def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
        import torch
        import transfer_queue as tq
        from tensordict import TensorDict

        fields = ["prompts", "responses", "response_mask", "extra_fields"]
        if self.use_critic:
            fields.append("values")
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        rows = rows_from_tensordict(data, batch.keys, batch.tags)
        res = compute_row_advantages(
            rows, self._hiper["estimator"], self._hiper["estimator_config"],
            reward_scale=self._hiper["reward_scale"], critic_heads=self._hiper["critic_heads"],
            value_coefs=self._hiper["value_coefs"], pad_token_id=int(self.tokenizer.pad_token_id or 0),
        )  # fmt: skip
        nested = partial(torch.nested.as_nested_tensor, layout=torch.jagged)
        loss_mask = nested([m.long() for m in res.loss_mask])
        output = TensorDict(
            {
                "advantages": nested(res.advantages),
                "returns": nested(res.returns),
                "hae_loss_mask": loss_mask,
                "loss_mask": loss_mask,
                "hae_value_pos": res.value_pos,
                "hae_value_target": res.value_target,
                "hae_value_weight": res.value_weight,
            },
            batch_size=len(batch),
        )
        metrics.update(res.metrics)
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)

    def _compute_metrics(
        self, batch: Any, metrics: dict, timing_raw: dict, global_steps: int, epoch: int
    ) -> None:
        """verl's metrics step; with 3 value channels verl's value block is replaced by per-channel metrics."""
        if not (self.use_critic and self._hiper["critic_heads"] == 3):
            return super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        import transfer_queue as tq

        # verl's compute_data_metrics masked_selects the values with the [B, R] response mask: [B, R, 3] fails.
        self.use_critic = False
        try:
            super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        finally:
            self.use_critic = True
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["values"])
        real = [not tag.get("is_padding", False) for tag in batch.tags]
        metrics.update(channel_value_metrics([v for v, r in zip(data["values"].unbind(), real) if r]))


__all__ = [
    "HAVE_VERL",
    "PAPER_SWITCH_MESSAGE",
    "TRAINER_NAME",
    "HiPERTrainer",
    "channel_value_metrics",
    "hiper_settings",
    "unsupported_settings",
]

"""Opt-in three-head critic (low, high, term; spec §3.11) on verl 0.9.1's FSDP critic engine.

verl 0.9.1 builds its critic with ``AutoModelForTokenClassification`` and one output channel: the FSDP engine's
``_build_module`` (``verl/workers/engine/fsdp/transformer_impl.py``) sets ``hf_config.num_labels = 1`` right
before it calls ``verl.utils.model.load_valuehead_model``, so ``critic.model.override_config.num_labels=3`` is
overwritten. Everything downstream already carries a trailing channel dimension unchanged (checked on the
installed source and by ``tests/test_verl_plugin_installed.py``):

* ``FSDPEngineWithValueHead.prepare_model_outputs`` calls ``squeeze(-1)`` on the ``[..., num_labels]`` logits,
  a no-op for 3 labels, and packs ``[total_tokens, 3]`` into a jagged ``[B, seq, 3]`` nested tensor (both the
  remove-padding and the padded path);
* ``postprocess_batch_func``, the TransferQueue put/get, ``response_from_nested`` (trainer ``_compute_values``)
  and ``no_padding_2_padding`` (in :func:`~hiper.integrations.verl.losses.hae_value_loss`) slice along the token
  dimension and keep the channels.

So one wrapper is enough: :func:`install` replaces ``verl.utils.model.load_valuehead_model`` (which
``_build_module`` imports at call time) with :func:`_three_head_loader`'s wrapper. The wrapper passes through
untouched unless the critic's HF config carries ``hiper_critic_heads`` (set through
``critic.model.override_config`` by :func:`configure_critic`, which ``HiPERTrainer._setup`` runs when
``hiper.critic_heads: 3``); then it restores ``num_labels = 3`` before verl's loader runs and checks the built
module (a 3-channel ``score`` layer, not trl's one-channel ``v_head`` fallback).

The plugin (imported in every verl process through the ``verl.plugins`` entry point, so also in the critic's
engine workers) installs the wrapper only when ``verl.__version__ == "0.9.1"``; ``HiPERTrainer`` refuses
``hiper.critic_heads: 3`` on any other version, and on critic strategies other than ``fsdp``/``fsdp2``
(megatron, veomni, torchtitan build their critic elsewhere). verl's own ``compute_data_metrics`` cannot read
3-channel values (``masked_select`` against the ``[B, R]`` response mask), so ``HiPERTrainer`` logs per-channel
value metrics itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

SUPPORTED_VERL_VERSION = "0.9.1"
#: the HF-config attribute (set via ``critic.model.override_config``) that asks the wrapper for N channels.
HEADS_KEY = "hiper_critic_heads"
N_HEADS = 3
PATCH_TARGET = "verl.utils.model.load_valuehead_model"
FSDP_STRATEGIES = ("fsdp", "fsdp2")
_ORIGINAL_ATTR = "__hiper_original__"


class CriticHeadsUnsupported(RuntimeError):
    """The three-head critic cannot run with this verl version or critic setup."""


def check_verl_version(version: str | None = None) -> str:
    """Return verl's version; raise :class:`CriticHeadsUnsupported` unless it is exactly 0.9.1."""
    if version is None:
        import verl

        version = str(getattr(verl, "__version__", "unknown"))
    if version != SUPPORTED_VERL_VERSION:
        raise CriticHeadsUnsupported(
            f"hiper.critic_heads=3 patches verl's FSDP critic builder and supports verl=={SUPPORTED_VERL_VERSION} "
            f"only (installed: verl {version}). Use hiper.critic_heads=1 (single head, position-read) on this "
            "version, or the built-in trainer (hiper train: a three-head critic with algorithm.hae.switch_mode=code)."
        )
    return version


def requested_heads(hf_config: Any) -> int | None:
    """The channel count the critic's HF config asks hiper for (``hiper_critic_heads``), or None."""
    value = getattr(hf_config, HEADS_KEY, None)
    if value is None:
        return None
    heads = int(value)
    if heads != N_HEADS:
        raise ValueError(f"{HEADS_KEY}={value!r}: hiper's critic patch builds {N_HEADS} value channels only")
    return heads


def value_channels(module: Any) -> int:
    """Output channels of a built verl critic module; raises if it is trl's one-channel ``v_head`` fallback."""
    if hasattr(module, "v_head"):
        raise CriticHeadsUnsupported(
            "verl fell back to trl's AutoModelForCausalLMWithValueHead (one value head): the critic checkpoint "
            "could not be loaded as AutoModelForTokenClassification, so it cannot carry 3 value channels"
        )
    score = getattr(module, "score", None)
    if score is None:
        score = getattr(module, "classifier", None)
    out = getattr(score, "out_features", None)
    return int(out) if out is not None else int(module.config.num_labels)


def _three_head_loader(original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap verl's ``load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code)``."""

    @functools.wraps(original)
    def load_valuehead_model(
        local_path: Any, torch_dtype: Any, model_config: Any, trust_remote_code: Any
    ) -> Any:
        heads = requested_heads(model_config)
        if heads is None:
            return original(local_path, torch_dtype, model_config, trust_remote_code)
        model_config.num_labels = heads  # verl's _build_module has just forced 1
        module = original(local_path, torch_dtype, model_config, trust_remote_code)
        got = value_channels(module)
        if got != heads:
            raise CriticHeadsUnsupported(f"critic built with {got} value channels, {heads} requested")
        return module

    setattr(load_valuehead_model, _ORIGINAL_ATTR, original)
    return load_valuehead_model


def is_installed() -> bool:
    """Whether :func:`install` has wrapped verl's loader in this process."""
    import verl.utils.model as verl_model

    return getattr(verl_model.load_valuehead_model, _ORIGINAL_ATTR, None) is not None


def install() -> str:
    """Wrap ``verl.utils.model.load_valuehead_model`` (idempotent); return a one-line description.

    Raises :class:`CriticHeadsUnsupported` unless verl is 0.9.1. The wrapper is inert for critics whose HF
    config has no ``hiper_critic_heads`` (every critic unless ``hiper.critic_heads: 3``).
    """
    check_verl_version()
    import verl.utils.model as verl_model

    if not is_installed():
        verl_model.load_valuehead_model = _three_head_loader(verl_model.load_valuehead_model)
    return (
        f"{PATCH_TARGET} wrapped (verl {SUPPORTED_VERL_VERSION}): num_labels={N_HEADS} for critics whose "
        f"override_config sets {HEADS_KEY}={N_HEADS}; a pass-through otherwise"
    )


def uninstall() -> None:
    """Restore verl's own loader (tests)."""
    import verl.utils.model as verl_model

    original = getattr(verl_model.load_valuehead_model, _ORIGINAL_ATTR, None)
    if original is not None:
        verl_model.load_valuehead_model = original


def _get(obj: Any, key: str) -> Any:
    try:
        return obj.get(key, None) if obj is not None else None
    except Exception:  # noqa: BLE001
        return None


def critic_problems(config: Any, critic_heads: int, version: str | None = None) -> list[str]:
    """Why ``hiper.critic_heads`` cannot run with this verl config (empty list: it can). No side effects."""
    critic = _get(config, "critic")
    model = _get(critic, "model")
    override = _get(model, "override_config") or {}
    labels, marker = _get(override, "num_labels"), _get(override, HEADS_KEY)
    problems = []
    if critic_heads == 1:
        if marker is not None or (labels is not None and int(labels) != 1):
            problems.append(
                f"critic.model.override_config asks for num_labels={labels} / {HEADS_KEY}={marker} but "
                "hiper.critic_heads=1: set hiper.critic_heads=3 for the three-head critic"
            )
        return problems
    if critic_heads != N_HEADS:
        return [f"hiper.critic_heads must be 1 or {N_HEADS}, got {critic_heads}"]
    try:
        check_verl_version(version)
    except CriticHeadsUnsupported as exc:
        problems.append(str(exc))
    strategy = str(_get(critic, "strategy") or "fsdp")
    if strategy not in FSDP_STRATEGIES:
        problems.append(
            f"hiper.critic_heads=3 patches verl's FSDP critic engine only; critic.strategy={strategy} "
            f"(use {' or '.join(FSDP_STRATEGIES)})"
        )
    for key, value in (("num_labels", labels), (HEADS_KEY, marker)):
        if value is not None and int(value) != N_HEADS:
            problems.append(f"hiper.critic_heads=3 but critic.model.override_config.{key}={value}")
    return problems


def configure_critic(config: Any, critic_heads: int) -> dict[str, Any]:
    """Check ``config`` for ``hiper.critic_heads`` and, for 3 heads, write ``num_labels`` and
    ``hiper_critic_heads`` into ``critic.model.override_config`` (the critic worker builds its HF config
    from it, so the workers' wrapper sees the request). Returns the override written (empty for 1 head).

    Raises ``ValueError`` listing :func:`critic_problems`, or :class:`CriticHeadsUnsupported` if the wrapper is
    not installed in this process (the plugin did not load or verl is not 0.9.1).
    """
    problems = critic_problems(config, critic_heads)
    if problems:
        raise ValueError("; ".join(problems))
    if critic_heads == 1:
        return {}
    if not is_installed():
        raise CriticHeadsUnsupported(
            "hiper.critic_heads=3 needs hiper's verl plugin loaded in every verl process (it wraps "
            f"{PATCH_TARGET}); check VERL_USE_EXTERNAL_PLUGINS and hiper.integrations.verl.plugin.LAST_REPORT"
        )
    from omegaconf import open_dict

    written = {"num_labels": N_HEADS, HEADS_KEY: N_HEADS}
    with open_dict(config):
        if config.critic.model.get("override_config", None) is None:
            config.critic.model.override_config = {}
        for key, value in written.items():
            config.critic.model.override_config[key] = value
    return written


__all__ = [
    "FSDP_STRATEGIES",
    "HEADS_KEY",
    "N_HEADS",
    "PATCH_TARGET",
    "SUPPORTED_VERL_VERSION",
    "CriticHeadsUnsupported",
    "check_verl_version",
    "configure_critic",
    "critic_problems",
    "install",
    "is_installed",
    "requested_heads",
    "uninstall",
    "value_channels",
]

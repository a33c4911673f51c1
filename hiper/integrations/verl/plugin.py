"""verl plugin entry point: importing this module registers hiper's components in the current process.

verl 0.9.1 loads every entry point of the group ``verl.plugins`` at ``import verl`` (in the driver, the
``AgentLoopWorker`` actors and the engine workers alike), with ``ep.load()``: that **imports** the module and
does not call anything, so registration runs at import time, here. hiper's ``pyproject.toml`` declares::

    [project.entry-points."verl.plugins"]
    hiper = "hiper.integrations.verl.plugin"

Filter with ``VERL_USE_EXTERNAL_PLUGINS=auto|none|hiper`` or load explicitly with
``VERL_USE_EXTERNAL_MODULES=hiper.integrations.verl.plugin``. verl swallows plugin import errors at DEBUG
level, so each registration here is guarded on its own and failures are logged at WARNING (and kept in
:data:`LAST_REPORT`): ``python -c "import verl, hiper.integrations.verl.plugin as p; print(p.LAST_REPORT)"``
shows what registered.

Registered:

* agent loop ``hiper_plan_execute`` (:class:`~hiper.integrations.verl.agent_loop.HiPERAgentLoop`);
* v1 trainer mode ``hiper_sync`` (:class:`~hiper.integrations.verl.trainer.HiPERTrainer`);
* advantage-estimator names verl does not know (``hae``, ``gigpo``) as guards that raise when reached through
  verl's generic (row-by-row) path, so ``algorithm.adv_estimator=hae`` is a known name but can only run in
  ``hiper_sync`` mode.

Patched (verl 0.9.1 only, recorded under ``LAST_REPORT["critic_heads"]``): the three-head critic wrapper of
:mod:`hiper.integrations.verl.critic_heads` around ``verl.utils.model.load_valuehead_model``. It acts only on a
critic whose ``override_config`` carries ``hiper_critic_heads: 3`` (what ``hiper.critic_heads: 3`` writes) and
is a pass-through otherwise; on another verl version nothing is patched and ``hiper.critic_heads: 3`` is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

GUARDED_ESTIMATORS = ("hae", "gigpo")
#: component -> "ok" or the error message of the last :func:`register_all` call.
LAST_REPORT: dict[str, str] = {}


def _estimator_guard(name: str) -> Callable[..., Any]:
    def guard(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"algorithm.adv_estimator={name} is computed by hiper over whole sessions; run it with "
            "trainer.use_v1=true trainer.v1.trainer_mode=hiper_sync (verl's generic path is row by row)"
        )

    guard.__name__ = f"hiper_{name}_guard"
    return guard


_GUARDS = {name: _estimator_guard(name) for name in GUARDED_ESTIMATORS}


def register_all(
    *,
    register_agent_loop: Callable[[str], Callable[[type], type]] | None = None,
    register_trainer: Callable[[str], Callable[[type], type]] | None = None,
    register_adv_est: Callable[[str], Callable[[Callable[..., Any]], Any]] | None = None,
    known_estimators: Callable[[], Any] | None = None,
) -> dict[str, str]:
    """Register the agent loop, the trainer mode and the estimator guards; return ``{component: status}``.

    The registry functions default to verl's (``verl.experimental.agent_loop.agent_loop.register``,
    ``verl.trainer.ppo.v1.trainer_base.register_trainer``, ``verl.trainer.ppo.core_algos.register_adv_est``);
    tests pass fakes. Idempotent: registering the same objects again is a no-op in verl's registries.
    """
    # imported here, not at the top: verl imports this module while ``import verl`` runs, and these two import
    # verl's own classes, which must not be imported before verl has finished initialising
    from hiper.integrations.verl.agent_loop import AGENT_NAME, HiPERAgentLoop
    from hiper.integrations.verl.trainer import TRAINER_NAME, HiPERTrainer

    report: dict[str, str] = {}

    def attempt(component: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            report[component] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, and logged loudly (verl would hide it)
            report[component] = f"{type(exc).__name__}: {exc}"
            logger.warning("hiper verl plugin: could not register %s: %s", component, report[component])

    def agent_loop() -> None:
        reg = register_agent_loop
        if reg is None:
            from verl.experimental.agent_loop.agent_loop import register as reg
        reg(AGENT_NAME)(HiPERAgentLoop)

    def trainer() -> None:
        reg = register_trainer
        if reg is None:
            from verl.trainer.ppo.v1.trainer_base import register_trainer as reg
        reg(TRAINER_NAME)(HiPERTrainer)

    def estimators() -> None:
        reg, known = register_adv_est, known_estimators
        if reg is None:
            from verl.trainer.ppo import core_algos

            reg = core_algos.register_adv_est

            def known() -> Any:
                return core_algos.ADV_ESTIMATOR_REGISTRY

        existing = known() if known is not None else {}
        for name, guard in _GUARDS.items():
            if name not in existing:
                reg(name)(guard)

    attempt(f"agent_loop:{AGENT_NAME}", agent_loop)
    attempt(f"trainer:{TRAINER_NAME}", trainer)
    attempt("adv_estimators:" + ",".join(GUARDED_ESTIMATORS), estimators)
    # the "critic_heads" entry belongs to install_critic_heads_patch
    for key in [k for k in LAST_REPORT if k != "critic_heads"]:
        del LAST_REPORT[key]
    LAST_REPORT.update(report)
    return report


def install_critic_heads_patch() -> str:
    """Install the opt-in three-head critic wrapper (verl 0.9.1 only); record the outcome in
    ``LAST_REPORT["critic_heads"]`` and return it. Another verl version is not an error here (the patch is
    opt-in): ``HiPERTrainer`` refuses ``hiper.critic_heads: 3`` there with the supported version in the message.
    """
    from hiper.integrations.verl import critic_heads  # verl internals: only after ``import verl`` (see above)

    try:
        status = "ok: " + critic_heads.install()
    except critic_heads.CriticHeadsUnsupported as exc:
        status = f"not installed: {exc}"
        logger.info("hiper verl plugin: three-head critic patch %s", status)
    except Exception as exc:  # noqa: BLE001 - reported, and logged loudly (verl would hide it)
        status = f"{type(exc).__name__}: {exc}"
        logger.warning("hiper verl plugin: could not install the three-head critic patch: %s", status)
    LAST_REPORT["critic_heads"] = status
    return status


def _autoregister() -> None:
    """Register with verl's registries when verl is importable (the entry-point path)."""
    import importlib.util

    if importlib.util.find_spec("verl") is None:
        return
    register_all()
    install_critic_heads_patch()


_autoregister()

__all__ = ["GUARDED_ESTIMATORS", "LAST_REPORT", "install_critic_heads_patch", "register_all"]

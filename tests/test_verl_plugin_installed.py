"""Checks against a real verl 0.9.1 install (``.venv-verl``); skipped when verl is not importable.

.venv-verl/bin/pytest tests/test_verl_plugin_installed.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

verl = pytest.importorskip(
    "verl", reason="verl is not installed (make the .venv-verl: bash recipes/verl/venv.sh)"
)


def test_version_pinned() -> None:
    assert verl.__version__ == "0.9.1", "hiper's adapter targets verl 0.9.1 exactly"


def test_entry_point_registered_everything() -> None:
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.v1 import get_trainer_cls

    import hiper.integrations.verl.plugin as plugin
    from hiper.integrations.verl.trainer import HiPERTrainer

    assert set(plugin.LAST_REPORT.values()) == {"ok"}, plugin.LAST_REPORT
    assert _agent_loop_registry["hiper_plan_execute"] == {
        "_target_": "hiper.integrations.verl.agent_loop.HiPERAgentLoop"
    }
    assert get_trainer_cls("hiper_sync") is HiPERTrainer
    with pytest.raises(RuntimeError, match="hiper_sync"):
        core_algos.get_adv_estimator_fn("hae")()


def test_recipes_compose_with_verl_config() -> None:
    hydra = pytest.importorskip("hydra")
    root = Path(__file__).resolve().parents[1] / "recipes" / "verl"
    for name in ("alfworld_qwen2.5_1.5b", "webshop_qwen2.5_7b"):
        with hydra.initialize_config_dir(config_dir=str(root), version_base=None):
            cfg = hydra.compose(config_name=name)
        assert cfg.trainer.v1.trainer_mode == "hiper_sync" and cfg.critic.enable is True
        assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "hiper_plan_execute"


def test_loss_adapters_match_pure_cores() -> None:
    torch = pytest.importorskip("torch")
    from tensordict import TensorDict

    from hiper.integrations.verl.losses import position_value_loss, swap_loss_mask

    td = TensorDict(
        {"response_mask": torch.ones(2, 3), "hae_loss_mask": torch.tensor([[1, 0, 1], [0, 0, 1]])}, [2]
    )
    swapped = swap_loss_mask(td)
    assert torch.equal(swapped["response_mask"], td["hae_loss_mask"]) and torch.equal(
        td["response_mask"], torch.ones(2, 3)
    )
    v = torch.zeros(2, 3)
    loss, _ = position_value_loss(
        v, v, torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), torch.ones(2, 3), 0.5, 2.0
    )
    assert float(loss) > 0

"""Registry interface, config validation, layout helpers, token broadcast and whitening."""

from __future__ import annotations

import pytest
import torch

from hiper.advantage import (
    AdvantageInputs,
    GAEConfig,
    GiGPOConfig,
    GRPOConfig,
    HAEConfig,
    RLOOConfig,
    ShapingConfig,
    available,
    get,
    hae,
    pad_turns,
    register,
    to_token_level,
    turn_mask_from_index,
    unpad,
    whiten,
)
from hiper.advantage.registry import AdvantageOutput


def _inputs(seed: int = 0, n: int = 12, t: int = 7, **overrides) -> AdvantageInputs:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    last = torch.zeros_like(mask)
    last[torch.arange(n), lengths - 1] = True
    fields = {
        "rewards": torch.where(last, 10.0 * (torch.rand(n, t, generator=gen) < 0.5), 0.0),
        "dones": last & (torch.rand(n, 1, generator=gen) < 0.7),
        "turn_mask": mask,
        "switch": torch.rand(n, t, generator=gen) < 0.4,
        "valid": torch.rand(n, t, generator=gen) < 0.9,
        "keep_inconsistent": torch.rand(n, t, generator=gen) < 0.2,
        "v_low": torch.randn(n, t, generator=gen),
        "v_high": torch.randn(n, t, generator=gen),
        "v_term": torch.randn(n, t, generator=gen),
        "v_turn": torch.randn(n, t, generator=gen),
        "group": torch.arange(n) // 4,
        "state_id": torch.randint(0, 3, (n, t), generator=gen),
    }
    fields.update(overrides)
    return AdvantageInputs(**fields)


# ------------------------------------------------------------------------------------------------ registry


def test_known_estimators_and_their_needs():
    assert {"hae", "gae", "grpo", "rloo", "gigpo"} <= set(available())
    assert get("hae").needs_critic and get("hae").heads == ("low", "high", "term")
    assert get("hae").heads_for(HAEConfig(switch_mode="paper")) == ("low", "high")
    assert get("gae").needs_critic and get("gae").heads == ("turn",)
    for name in ("grpo", "rloo", "gigpo"):
        assert not get(name).needs_critic and get(name).heads == ()
    assert get("gigpo").needs_state_id and get("grpo").needs_group


def test_unknown_estimator_lists_known_ones():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'.*'gae'.*'hae'"):
        get("ppo")


def test_duplicate_and_bad_registrations_raise():
    with pytest.raises(ValueError, match="already registered"):
        register("hae", config_cls=HAEConfig)(lambda inputs, config: None)
    with pytest.raises(ValueError, match="unknown value heads"):
        register("x_bad_head", config_cls=ShapingConfig, heads=("middle",))
    with pytest.raises(ValueError, match="ShapingConfig"):
        register("x_bad_cfg", config_cls=dict)


def test_register_custom_estimator_roundtrip():
    @register("test_zero", config_cls=ShapingConfig)
    def _zero(inputs: AdvantageInputs, config: ShapingConfig) -> AdvantageOutput:
        z = torch.zeros_like(inputs.rewards)
        from hiper.advantage.registry import _shape

        shaped = _shape(inputs, config)
        return AdvantageOutput(z, z, z, inputs.turn_mask, {}, {}, shaped, {})

    try:
        out = get("test_zero")(_inputs())
        assert isinstance(out, AdvantageOutput) and float(out.adv_action.abs().sum()) == 0.0
        assert "test_zero" in available()
    finally:
        from hiper.advantage.registry import _REGISTRY

        _REGISTRY.pop("test_zero", None)  # keep the global registry clean for other tests


def test_hae_without_critic_is_refused():
    with pytest.raises(ValueError, match="needs a critic with heads \\['low', 'high', 'term'\\].*v_term"):
        get("hae")(_inputs(v_term=None))
    with pytest.raises(ValueError, match="v_low', 'v_high', 'v_term'"):
        get("hae").check_inputs(_inputs(v_low=None, v_high=None, v_term=None))
    with pytest.raises(ValueError, match="switch"):
        get("hae")(_inputs(switch=None))
    with pytest.raises(ValueError, match="paper.*beta"):
        get("hae")(_inputs(), HAEConfig(switch_mode="paper"))
    with pytest.raises(ValueError, match="v_turn"):
        get("gae")(_inputs(v_turn=None))
    with pytest.raises(ValueError, match="group"):
        get("grpo")(_inputs(group=None))
    with pytest.raises(ValueError, match="state_id"):
        get("gigpo")(_inputs(state_id=None))


def test_wrong_config_type_is_refused():
    with pytest.raises(TypeError, match="takes a HAEConfig, got GRPOConfig"):
        get("hae")(_inputs(), GRPOConfig())


def test_hae_estimator_output_contract():
    inputs = _inputs()
    cfg = HAEConfig(keep_penalty=-0.3, keep_consistency_penalty=-0.3, invalid_penalty=0.1)
    out = get("hae")(inputs, cfg)
    mask = inputs.turn_mask
    res = hae(out.shaped_rewards.total, inputs.dones, inputs.switch, inputs.v_low, inputs.v_high, inputs.v_term,
              mask, cfg)  # fmt: skip
    assert torch.equal(out.subgoal_in_loss, res.boundary)
    assert set(out.returns) == set(out.value_mask) == {"low", "high", "term"}
    assert torch.equal(out.value_mask["low"], mask) and torch.equal(out.value_mask["term"], mask)
    assert torch.equal(out.value_mask["high"], res.boundary)
    torch.testing.assert_close(out.returns["high"], res.ret_high)
    # per-role whitening over the batch (spec §3.9)
    for adv, sel in ((out.adv_action, mask), (out.adv_subgoal, res.boundary), (out.adv_switch, mask)):
        values = adv[sel].double()
        assert abs(float(values.mean())) < 1e-5 and abs(float(values.std(unbiased=False)) - 1.0) < 1e-4
        assert bool((adv[~sel] == 0).all())
    # shaping reached the rewards and is logged
    assert float(out.shaped_rewards.terms["keep"].sum()) < 0.0
    for key in ("shaping/keep", "shaping/invalid", "shaping/keep_consistency", "switch/rate_after_first",
                "hae/mean_segment_length", "adv/action_mean", "adv/subgoal_std", "adv/switch_max",
                "returns/high_mean"):  # fmt: skip
        assert key in out.metrics, key
    assert out.metrics["hae/mean_segment_length"] == pytest.approx(
        float(mask.sum()) / float(res.boundary.sum())
    )
    # norm_adv=False returns the raw advantages
    raw = get("hae")(inputs, HAEConfig(norm_adv=False, keep_penalty=-0.3, keep_consistency_penalty=-0.3,
                                       invalid_penalty=0.1))  # fmt: skip
    torch.testing.assert_close(raw.adv_action, res.adv_low)
    torch.testing.assert_close(raw.adv_subgoal, res.adv_high)


def test_hae_whitening_respects_span_masks():
    inputs = _inputs()
    no_switch_span = torch.zeros_like(inputs.turn_mask)
    no_switch_span[:, 0] = inputs.turn_mask[:, 0]
    inputs.has_switch_span = no_switch_span
    out = get("hae")(inputs)
    assert bool((out.adv_switch[~no_switch_span] == 0).all())
    assert abs(float(out.adv_switch[no_switch_span].mean())) < 1e-5


def test_hae_paper_mode_estimator_has_two_heads():
    inputs = _inputs(beta=torch.full((12, 7), 0.5), v_low_keep=torch.zeros(12, 7), v_term=None)
    out = get("hae")(inputs, HAEConfig(switch_mode="paper"))
    assert set(out.returns) == {"low", "high"}


@pytest.mark.parametrize("name, cfg", [("gae", GAEConfig()), ("grpo", GRPOConfig()), ("rloo", RLOOConfig()),
                                       ("gigpo", GiGPOConfig())])  # fmt: skip
def test_flat_estimators_give_every_role_the_same_advantage(name, cfg):
    inputs = _inputs()
    out = get(name)(inputs, cfg)
    assert torch.equal(out.adv_action, out.adv_subgoal) and torch.equal(out.adv_action, out.adv_switch)
    assert torch.equal(out.subgoal_in_loss, inputs.turn_mask)
    assert bool((out.adv_action[~inputs.turn_mask] == 0).all())
    if name == "gae":
        assert set(out.returns) == {"turn"} and torch.equal(out.value_mask["turn"], inputs.turn_mask)
    else:
        assert out.returns == {} and out.value_mask == {}


def test_flat_estimator_keep_penalty_and_no_protocol():
    inputs = _inputs()
    base = get("grpo")(inputs, GRPOConfig(norm_by_std=False))
    pen = get("grpo")(inputs, GRPOConfig(norm_by_std=False, keep_penalty=-1.0))
    keep_turns = (~inputs.switch & inputs.turn_mask).sum(dim=1).double()
    assert torch.equal(
        pen.shaped_rewards.terms["keep"].sum(dim=1).double(), -keep_turns
    )  # fixed mode default
    assert not torch.equal(base.adv_action, pen.adv_action)
    flat = _inputs(switch=None)
    get("grpo")(flat, GRPOConfig())  # no Plan-Execute protocol: fine without shaping that needs switch
    with pytest.raises(ValueError, match="needs inputs.switch"):
        get("grpo")(flat, GRPOConfig(keep_penalty=-1.0))


# ------------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: HAEConfig(gamma=0.0), "gamma must be in \\(0, 1\\]"),
        (lambda: HAEConfig(gamma=1.5), "gamma"),
        (lambda: HAEConfig(lam=-0.1), "lam must be in \\[0, 1\\]"),
        (lambda: HAEConfig(lam_seg=2.0), "lam_seg"),
        (lambda: HAEConfig(switch_mode="both"), "switch_mode must be one of \\['code', 'paper'\\]"),
        (lambda: HAEConfig(keep_penalty=0.3), "keep_penalty .* must be <= 0"),
        (lambda: HAEConfig(keep_consistency_penalty=0.3), "keep_consistency_penalty"),
        (lambda: HAEConfig(invalid_penalty=-0.1), "invalid_penalty .* must be >= 0"),
        (lambda: HAEConfig(keep_penalty_mode="distribute"), "keep_penalty_mode must be one of"),
        (lambda: HAEConfig(gamma=float("nan")), "finite"),
        (lambda: HAEConfig(gamma="0.9"), "must be a number"),
        (lambda: HAEConfig(norm_adv=1), "must be a bool"),
        (lambda: HAEConfig(switch_rate_floor=1.5), "switch_rate_floor"),
        (lambda: GiGPOConfig(mode="std"), "mode must be one of"),
        (lambda: GiGPOConfig(step_advantage_w=-1.0), "step_advantage_w"),
        (lambda: GRPOConfig(eps=0.0), "eps"),
        (lambda: GRPOConfig(group_stats="episode"), "group_stats"),
        (lambda: GAEConfig(lam=1.1), "lam"),
    ],
)
def test_config_validation(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_configs_are_keyword_only():
    with pytest.raises(TypeError):
        HAEConfig(1.0)  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ layout


def test_pad_unpad_roundtrip_in_any_order():
    gen = torch.Generator().manual_seed(3)
    lengths = torch.tensor([3, 1, 0, 5])
    traj = torch.repeat_interleave(torch.arange(4), lengths)
    turn = torch.cat([torch.arange(int(n)) for n in lengths])
    perm = torch.randperm(traj.numel(), generator=gen)
    traj, turn = traj[perm], turn[perm]
    values = torch.randn(traj.numel(), generator=gen)
    padded = pad_turns(values, traj, turn, 4, 6, fill=-1.0)
    assert padded.shape == (4, 6)
    mask = turn_mask_from_index(traj, turn, 4, 6)
    assert mask.sum(dim=1).tolist() == [3, 1, 0, 5]
    assert bool((padded[~mask] == -1.0).all())
    torch.testing.assert_close(unpad(padded, traj, turn), values)
    # trailing dims are kept
    vec = torch.randn(traj.numel(), 2, generator=gen)
    torch.testing.assert_close(unpad(pad_turns(vec, traj, turn, 4, 6), traj, turn), vec)


def test_empty_layouts():
    from hiper.advantage import HAEConfig, hae

    empty = torch.zeros(0, 4)
    none = torch.zeros(0, 4, dtype=torch.bool)
    res = hae(empty, none, none, empty, empty, empty, none, HAEConfig())
    assert res.adv_low.shape == (0, 4)
    with pytest.raises(ValueError, match="T_max >= 1"):
        z = torch.zeros(2, 0)
        b = torch.zeros(2, 0, dtype=torch.bool)
        hae(z, b, b, z, z, z, b, HAEConfig())


def test_layout_errors():
    traj, turn = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="duplicate"):
        pad_turns(torch.zeros(3), torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0]), 2, 2)
    with pytest.raises(ValueError, match="turn_index out of range"):
        pad_turns(torch.zeros(3), traj, torch.tensor([0, 5, 0]), 2, 2)
    with pytest.raises(ValueError, match="traj_index out of range"):
        pad_turns(torch.zeros(3), torch.tensor([0, 0, 2]), turn, 2, 2)
    with pytest.raises(ValueError, match="rows"):
        pad_turns(torch.zeros(2), traj, turn, 2, 2)
    with pytest.raises(ValueError, match="left-aligned"):
        turn_mask_from_index(torch.tensor([0, 0]), torch.tensor([0, 2]), 1)
    with pytest.raises(ValueError, match="integer"):
        unpad(torch.zeros(2, 2), traj.float(), turn)


# ------------------------------------------------------------------------------------------------ tokens


def test_to_token_level_golden():
    # turn 0: boundary with all three spans; turn 1: KEEP turn; turn 2: no <action> tags -> action fallback = all
    act = torch.tensor(
        [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool
    )
    sub = torch.tensor(
        [[0, 0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0]], dtype=torch.bool
    )
    sw = torch.tensor([[1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    adv_a = torch.tensor([1.0, 2.0, 3.0])
    adv_s = torch.tensor([10.0, 20.0, 30.0])
    adv_w = torch.tensor([100.0, 200.0, 300.0])
    in_loss = torch.tensor([True, False, True])
    token_adv, loss_mask = to_token_level(adv_a, adv_s, adv_w, in_loss, act, sub, sw)
    expected = torch.tensor([
        [100, 100, 10, 10, 1, 1, 0],
        [200, 0, 0, 2, 2, 0, 0],  # KEEP turn: subgoal tokens get nothing and leave the loss
        [303, 303, 33, 33, 3, 3, 0],  # overlapping masks add
    ], dtype=torch.float32)  # fmt: skip
    torch.testing.assert_close(token_adv, expected)
    assert loss_mask.tolist() == [
        [True] * 6 + [False],
        [True, False, False, True, True, False, False],
        [True] * 6 + [False],
    ]
    response = torch.ones_like(act)
    response[:, 5:] = False
    token_adv2, loss2 = to_token_level(adv_a, adv_s, adv_w, in_loss, act, sub, sw, response_mask=response)
    assert not bool(loss2[:, 5:].any()) and float(token_adv2[:, 5:].abs().sum()) == 0.0


def test_to_token_level_shape_errors():
    m = torch.zeros(2, 3, dtype=torch.bool)
    a = torch.zeros(2)
    with pytest.raises(ValueError, match="adv_subgoal"):
        to_token_level(a, torch.zeros(3), a, m[:, 0], m, m, m)
    with pytest.raises(ValueError, match="switch_mask"):
        to_token_level(a, a, a, m[:, 0], m, m, m.float())


def test_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -7.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = whiten(x, mask)
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (vals - vals.mean()) / (vals.std(unbiased=False) + 1e-8)
    torch.testing.assert_close(out[mask], expected)
    assert float(out[~mask].abs().sum()) == 0.0
    assert float(whiten(x, torch.zeros_like(mask)).abs().sum()) == 0.0
    one = torch.zeros_like(mask)
    one[0, 0] = True
    assert float(whiten(x, one).abs().sum()) == 0.0
    with pytest.raises(ValueError, match="bool"):
        whiten(x, mask.float())

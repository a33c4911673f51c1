"""Hand-checked golden cases for GRPO, RLOO, GiGPO and reward shaping (spec §3.2, §4.3)."""

from __future__ import annotations

import math

import pytest
import torch

from hiper.advantage import GiGPOConfig, GRPOConfig, ShapingConfig, gigpo, grpo, rloo, shape_rewards

S, K = True, False


def _padded(
    rows: list[list[float]], fill: float = 0.0, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    t_max = max(len(r) for r in rows)
    x = torch.full((len(rows), t_max), fill, dtype=dtype)
    mask = torch.zeros(len(rows), t_max, dtype=torch.bool)
    for i, r in enumerate(rows):
        x[i, : len(r)] = torch.tensor(r, dtype=dtype)
        mask[i, : len(r)] = True
    return x, mask


def _grpo_batch():
    # group 0: returns 10, 0, 5 (mean 5, unbiased std 5); group 1: a single trajectory with return 7
    rewards, mask = _padded([[0.0, 10.0], [0.0, 0.0, 0.0], [2.0, 3.0], [7.0]])
    return rewards, mask, torch.tensor([0, 0, 0, 1])


def test_grpo_golden():
    rewards, mask, group = _grpo_batch()
    adv = grpo(rewards, mask, group, GRPOConfig())
    eps = 1e-6
    expected = torch.tensor([5 / (5 + eps), -5 / (5 + eps), 0.0, 7 / (1 + eps)], dtype=torch.float64)
    torch.testing.assert_close(adv, expected)
    centred = grpo(rewards, mask, group, GRPOConfig(norm_by_std=False))
    torch.testing.assert_close(centred, torch.tensor([5.0, -5.0, 0.0, 7.0], dtype=torch.float64))


def test_grpo_turn_weighted_statistics():
    # turn weighting (verl's compute_mean_std_cross_steps): returns 10 (2 turns), 0 (3 turns), 5 (2 turns)
    rewards, mask, group = _grpo_batch()
    adv = grpo(rewards, mask, group, GRPOConfig(group_stats="turn", norm_by_std=False))
    mean = (2 * 10 + 3 * 0 + 2 * 5) / 7
    torch.testing.assert_close(adv[:3], torch.tensor([10 - mean, -mean, 5 - mean], dtype=torch.float64))
    # a lone 1-turn trajectory is a singleton (no baseline); a lone 3-turn one is centred on itself
    assert float(adv[3]) == pytest.approx(7.0)


def test_rloo_golden():
    rewards, mask, group = _grpo_batch()
    adv = rloo(rewards, mask, group)
    torch.testing.assert_close(adv, torch.tensor([10 - 2.5, 0 - 7.5, 5 - 5.0, 7.0], dtype=torch.float64))


def _gigpo_batch():
    """Group 0: three trajectories over anchor states 1, 2, 3; group 1 reuses state 1 (must not mix)."""
    rewards, mask = _padded([[0.0, 0.0, 8.0], [0.0, 0.0], [0.0, 4.0], [6.0]])
    state_id, _ = _padded([[1, 2, 3], [1, 2], [1, 3], [1]], fill=-1, dtype=torch.long)
    return rewards, mask, torch.tensor([0, 0, 0, 1]), state_id


def test_gigpo_mean_norm_golden():
    rewards, mask, group, state_id = _gigpo_batch()
    adv = gigpo(
        rewards, mask, group, state_id, GiGPOConfig(gamma=0.5, step_advantage_w=1.0, mode="mean_norm")
    )
    # episode: R = 8, 0, 4 -> A^E = 4, -4, 0; group 1 singleton -> 6
    # steps (gamma 0.5): G = [2, 4, 8], [0, 0], [2, 4], [6]
    # state 1 in group 0: {2, 0, 2}, mean 4/3; state 2: {4, 0}, mean 2; state 3: {8, 4}, mean 6; group 1: singleton
    expected, _ = _padded([[4 + 2 / 3, 4 + 2.0, 4 + 2.0], [-4 - 4 / 3, -4 - 2.0], [2 / 3, -2.0], [6.0]])
    torch.testing.assert_close(adv, expected)
    half = gigpo(rewards, mask, group, state_id, GiGPOConfig(gamma=0.5, step_advantage_w=0.5))
    expected_half, _ = _padded([[4 + 1 / 3, 5.0, 5.0], [-4 - 2 / 3, -5.0], [1 / 3, -1.0], [6.0]])
    torch.testing.assert_close(half, expected_half)


def test_gigpo_mean_std_norm_golden():
    rewards, mask, group, state_id = _gigpo_batch()
    eps = 1e-6
    adv = gigpo(rewards, mask, group, state_id, GiGPOConfig(gamma=0.5, mode="mean_std_norm", eps=eps))
    e = [4 / (4 + eps), -4 / (4 + eps), 0.0, 6 / (1 + eps)]  # episode std of {8, 0, 4} is 4
    s1 = 2 / math.sqrt(3)  # std of {2, 0, 2}
    s2 = 2 * math.sqrt(2)  # std of {4, 0} and of {8, 4}
    expected, _ = _padded([
        [e[0] + (2 / 3) / (s1 + eps), e[0] + 2 / (s2 + eps), e[0] + 2 / (s2 + eps)],
        [e[1] - (4 / 3) / (s1 + eps), e[1] - 2 / (s2 + eps)],
        [e[2] + (2 / 3) / (s1 + eps), e[2] - 2 / (s2 + eps)],
        [e[3]],
    ])  # fmt: skip
    torch.testing.assert_close(adv, expected)


def test_gigpo_padding_is_zero_and_state_ids_on_padding_ignored():
    rewards, mask, group, state_id = _gigpo_batch()
    state_id = torch.where(mask, state_id, torch.full_like(state_id, 1))  # padding reuses a real id
    adv = gigpo(rewards, mask, group, state_id, GiGPOConfig(gamma=0.5))
    ref = gigpo(*_gigpo_batch(), GiGPOConfig(gamma=0.5))
    torch.testing.assert_close(adv, ref)
    assert bool((adv[~mask] == 0).all())


# ------------------------------------------------------------------------------------------------ shaping


def _shaping_batch():
    rewards, mask = _padded([[0.0, 0.0, 0.0, 10.0], [1.0]])
    switch = torch.tensor([[K, S, K, K], [K, K, K, K]])
    valid = torch.tensor([[True, False, True, True], [True, True, True, True]])
    inconsistent = torch.tensor([[True, True, True, False], [True, False, False, False]])
    return rewards, switch, valid, inconsistent, mask


@pytest.mark.parametrize(
    "mode, skip_first, expected_row0, expected_row1",
    [
        ("fixed", False, [-0.4, 0.0, -0.4, -0.4], -0.4),
        ("fixed", True, [0.0, 0.0, -0.4, -0.4], 0.0),
        ("normalized", False, [-0.1, 0.0, -0.1, -0.1], 0.0),  # m = 3 KEEP of T = 4: -0.4 / 4 each
        ("normalized", True, [0.0, 0.0, -0.4 / 3, -0.4 / 3], 0.0),  # turns 1..3: m = 2 of 3
        ("last_step", False, [0.0, 0.0, 0.0, -0.3], 0.0),  # total -0.4 * 3 / 4 on the last turn
        ("last_step", True, [0.0, 0.0, 0.0, -0.4 * 2 / 3], 0.0),
    ],
)
def test_keep_penalty_modes(mode, skip_first, expected_row0, expected_row1):
    rewards, switch, valid, inconsistent, mask = _shaping_batch()
    cfg = ShapingConfig(keep_penalty=-0.4, keep_penalty_mode=mode, keep_penalty_skip_first=skip_first)
    shaped = shape_rewards(rewards, switch, valid, inconsistent, mask, cfg)
    torch.testing.assert_close(shaped.terms["keep"][0], torch.tensor(expected_row0, dtype=torch.float64))
    assert float(shaped.terms["keep"][1, 0]) == pytest.approx(expected_row1)  # T = 1 trajectory
    torch.testing.assert_close(shaped.total, torch.where(mask, rewards + shaped.terms["keep"], 0.0))


def test_invalid_consistency_and_floor_terms():
    rewards, switch, valid, inconsistent, mask = _shaping_batch()
    cfg = ShapingConfig(invalid_penalty=0.1, keep_consistency_penalty=-0.3, switch_rate_floor=0.5,
                        switch_rate_floor_coef=6.0)  # fmt: skip
    shaped = shape_rewards(rewards, switch, valid, inconsistent, mask, cfg)
    t = shaped.terms
    torch.testing.assert_close(t["invalid"][0], torch.tensor([0.0, -0.1, 0.0, 0.0], dtype=torch.float64))
    # turn 0 never (no previous subgoal), turn 1 is a SWITCH, turn 2 a flagged KEEP, turn 3 not flagged
    torch.testing.assert_close(
        t["keep_consistency"][0], torch.tensor([0.0, 0.0, -0.3, 0.0], dtype=torch.float64)
    )
    # switch rate = 1 flag / (T - 1 = 3) = 1/3 < 0.5 -> -6 * (0.5 - 1/3) = -1 on the last turn; T = 1 exempt
    torch.testing.assert_close(
        t["switch_rate_floor"][0], torch.tensor([0.0, 0.0, 0.0, -1.0], dtype=torch.float64)
    )
    assert float(t["switch_rate_floor"][1, 0]) == 0.0
    torch.testing.assert_close(shaped.total[0], torch.tensor([0.0, -0.1, -0.3, 9.0], dtype=torch.float64))
    assert float(shaped.total[1, 0]) == pytest.approx(1.0)
    assert bool((shaped.total[~mask] == 0).all())
    metrics = shaped.metrics(mask)
    assert metrics["shaping/invalid"] == pytest.approx(-0.05)  # -0.1 over 2 trajectories
    assert metrics["shaping/total_return"] == pytest.approx((8.6 + 1.0) / 2)


def test_shaping_needs_its_inputs():
    rewards, switch, valid, inconsistent, mask = _shaping_batch()
    with pytest.raises(ValueError, match="valid"):
        shape_rewards(rewards, switch, None, inconsistent, mask, ShapingConfig(invalid_penalty=0.1))
    with pytest.raises(ValueError, match="keep_inconsistent"):
        shape_rewards(rewards, switch, valid, None, mask, ShapingConfig(keep_consistency_penalty=-0.1))
    with pytest.raises(TypeError, match="ShapingConfig"):
        shape_rewards(rewards, switch, valid, inconsistent, mask, {"keep_penalty": -0.1})  # type: ignore[arg-type]
    shaped = shape_rewards(rewards, switch, None, None, mask, ShapingConfig())
    torch.testing.assert_close(shaped.total, torch.where(mask, rewards, 0.0))


# ------------------------------------------------------------------ penalties charged to the turn (verl-agent)


def _reference_turn_credit(env, shaped, mask, group, *, norm, eps, loo=False):
    """Plain loops: each valid turn scores its trajectory's env return plus its own shaping terms; statistics over
    the group's turn samples (unbiased std; one sample: mean 0, std 1)."""
    n, t = mask.shape
    samples = {}
    for i in range(n):
        ret = sum(float(env[i, j]) for j in range(t) if mask[i, j])
        for j in range(t):
            if mask[i, j]:
                samples.setdefault(int(group[i]), []).append((i, j, ret + float(shaped[i, j]) - float(env[i, j])))
    out = torch.zeros(n, t, dtype=torch.float64)
    for items in samples.values():
        m = len(items)
        mean = sum(s for _, _, s in items) / m if m > 1 else 0.0
        std = math.sqrt(sum((s - mean) ** 2 for _, _, s in items) / (m - 1)) if m > 1 else 1.0
        for i, j, s in items:
            if loo:
                out[i, j] = m / (m - 1) * (s - mean) if m > 1 else s
            else:
                out[i, j] = (s - mean) / (std + eps) if norm else s - mean
    return out


def _credit_inputs(seed: int):
    from hiper.advantage import AdvantageInputs

    gen = torch.Generator().manual_seed(seed)
    n, t = 12, 6
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    last = mask & ~torch.cat([mask[:, 1:], torch.zeros(n, 1, dtype=torch.bool)], 1)
    return AdvantageInputs(
        rewards=torch.where(last, 10.0 * (torch.rand(n, t, generator=gen) < 0.5), 0.0).double(),
        dones=last, turn_mask=mask, switch=torch.rand(n, t, generator=gen) < 0.5,
        valid=torch.rand(n, t, generator=gen) < 0.7, keep_inconsistent=torch.rand(n, t, generator=gen) < 0.2,
        group=torch.arange(n) // 4 if seed % 2 else torch.arange(n) // 3, state_id=torch.randint(0, 3, (n, t)),
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_turn_credit_matches_the_reference_loops(seed: int) -> None:
    from hiper.advantage import RLOOConfig, get

    inputs = _credit_inputs(seed)
    shaping = dict(invalid_penalty=0.1, keep_penalty=-0.3, keep_consistency_penalty=-0.3)
    out = get("grpo")(inputs, GRPOConfig(group_stats="turn", penalty_credit="turn", **shaping))
    ref = _reference_turn_credit(inputs.rewards, out.shaped_rewards.total, inputs.turn_mask, inputs.group,
                                 norm=True, eps=1e-6)
    torch.testing.assert_close(out.adv_action, ref, atol=1e-9, rtol=0)
    out = get("rloo")(inputs, RLOOConfig(penalty_credit="turn", **shaping))
    ref = _reference_turn_credit(inputs.rewards, out.shaped_rewards.total, inputs.turn_mask, inputs.group,
                                 norm=False, eps=0.0, loo=True)
    torch.testing.assert_close(out.adv_action, ref, atol=1e-9, rtol=0)
    # GiGPO's episode level is the same per-turn advantage (centred only in mean_norm); no step level with w = 0
    out = get("gigpo")(inputs, GiGPOConfig(group_stats="turn", penalty_credit="turn", step_advantage_w=0.0,
                                           **shaping))
    ref = _reference_turn_credit(inputs.rewards, out.shaped_rewards.total, inputs.turn_mask, inputs.group,
                                 norm=False, eps=0.0)
    torch.testing.assert_close(out.adv_action, ref, atol=1e-9, rtol=0)


def test_turn_credit_charges_the_invalid_turn_only() -> None:
    """Two episodes of one group: the first wins (10 on its last turn), the second fails with an invalid first turn.
    Charged per episode, both turns of the loser get the same advantage; charged per turn, the invalid turn gets
    less than the loser's valid turn, and the winner's turns are untouched by the loser's penalty."""
    from hiper.advantage import AdvantageInputs, get

    rewards, mask = _padded([[0.0, 10.0], [0.0, 0.0]])
    inputs = AdvantageInputs(rewards=rewards, dones=mask & torch.tensor([[False, True]] * 2), turn_mask=mask,
                             valid=torch.tensor([[True, True], [False, True]]), group=torch.tensor([0, 0]))
    episode = get("grpo")(inputs, GRPOConfig(group_stats="turn", invalid_penalty=0.5)).adv_action
    turn = get("grpo")(inputs, GRPOConfig(group_stats="turn", penalty_credit="turn", invalid_penalty=0.5)).adv_action
    assert float(episode[1, 0]) == float(episode[1, 1])
    assert float(turn[1, 0]) < float(turn[1, 1]) < 0.0 < float(turn[0, 0]) == float(turn[0, 1])


def test_turn_credit_needs_turn_statistics() -> None:
    with pytest.raises(ValueError, match="penalty_credit='turn'.*group_stats='turn'"):
        GRPOConfig(penalty_credit="turn")
    with pytest.raises(ValueError, match="penalty_credit"):
        GiGPOConfig(group_stats="turn", penalty_credit="step")

"""Token-level GAE (the paper's PPO baseline, verl-agent ``gae``) against a plain loop of verl's
``compute_gae_advantage_return`` on turn samples, its per-turn scores, the per-token critic read and its config."""

from __future__ import annotations

import pytest
import torch

from hiper.advantage import AdvantageInputs, TokenGAEConfig, get, whiten
from hiper.config import ConfigError, estimator_config, from_dict
from hiper.models.critic import ValueModel, build_critic, head_names
from tests.test_critic import PositionBackbone


def verl_gae_loop(rewards: list[list[float]], values: list[list[float]], gamma: float,
                  lam: float) -> tuple[list[list[float]], list[list[float]]]:
    """verl's ``compute_gae_advantage_return`` written out for one response per row (no padding inside a row)."""
    advs, rets = [], []
    for r, v in zip(rewards, values):
        n = len(r)
        adv = [0.0] * n
        next_value, last = 0.0, 0.0
        for j in reversed(range(n)):
            delta = r[j] + gamma * next_value - v[j]
            last = delta + gamma * lam * last
            adv[j] = last
            next_value = v[j]
        advs.append(adv)
        rets.append([a + x for a, x in zip(adv, v)])
    return advs, rets


def _random_case(seed: int, n: int = 5, t: int = 4, length: int = 7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    turn_mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    won = torch.rand(n, generator=g) < 0.5
    rewards = torch.zeros(n, t)
    dones = torch.zeros(n, t, dtype=torch.bool)
    for i in range(n):
        last = int(lengths[i]) - 1
        rewards[i, last] = 10.0 * float(won[i])
        dones[i, last] = bool(won[i]) or bool(torch.rand(1, generator=g) < 0.5)
    valid = (torch.rand(n, t, generator=g) < 0.8) | ~turn_mask
    n_tok = torch.randint(1, length + 1, (n, t), generator=g)
    token_mask = (torch.arange(length).view(1, 1, -1) < n_tok.unsqueeze(-1)) & turn_mask.unsqueeze(-1)
    v_token = torch.randn(n, t, length, generator=g) * 3
    return AdvantageInputs(rewards=rewards, dones=dones, turn_mask=turn_mask, valid=valid, v_token=v_token,
                           token_mask=token_mask)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_equals_verls_gae_loop_on_every_turn_sample(seed: int, gamma: float, lam: float) -> None:
    inputs = _random_case(seed)
    config = TokenGAEConfig(gamma=gamma, lam=lam, invalid_penalty=0.1, norm_adv=False)
    out = get("token_gae")(inputs, config)
    adv, ret = out.extras["token_adv"], out.returns["token"]
    n, t, _ = inputs.v_token.shape
    for i in range(n):
        episode_return = float(inputs.rewards[i][inputs.turn_mask[i]].sum())
        for k in range(t):
            m = inputs.token_mask[i, k]
            if not bool(inputs.turn_mask[i, k]):
                assert not out.value_mask["token"][i, k].any() and not adv[i, k].any()
                continue
            # verl-agent: the episode's return on the turn's last token, plus that turn's own invalid penalty
            score = episode_return - (0.1 if not bool(inputs.valid[i, k]) else 0.0)
            n_tok = int(m.sum())
            rewards = [0.0] * (n_tok - 1) + [score]
            ref_adv, ref_ret = verl_gae_loop([rewards], [inputs.v_token[i, k, :n_tok].tolist()], gamma, lam)
            assert adv[i, k, :n_tok].tolist() == pytest.approx(ref_adv[0], abs=1e-5)
            assert ret[i, k, :n_tok].tolist() == pytest.approx(ref_ret[0], abs=1e-5)
            assert not adv[i, k, n_tok:].any() and not ret[i, k, n_tok:].any()


def test_whitened_over_the_batch_response_tokens() -> None:
    inputs = _random_case(3)
    raw = get("token_gae")(inputs, TokenGAEConfig(norm_adv=False)).extras["token_adv"]
    out = get("token_gae")(inputs, TokenGAEConfig())
    tokens = inputs.token_mask & inputs.turn_mask.unsqueeze(-1)
    assert torch.allclose(out.extras["token_adv"], whiten(raw, tokens))
    assert float(out.extras["token_adv"][tokens].mean()) == pytest.approx(0.0, abs=1e-5)


def test_lambda_one_gamma_one_gives_every_token_the_turn_score_minus_its_value() -> None:
    inputs = _random_case(5)
    out = get("token_gae")(inputs, TokenGAEConfig(norm_adv=False))
    tokens = out.value_mask["token"]
    scores = out.returns["token"][..., 0]  # returns = score everywhere when gamma = lam = 1
    expected = torch.where(tokens, scores.unsqueeze(-1) - inputs.v_token, 0.0)
    assert torch.allclose(out.extras["token_adv"], expected, atol=1e-5)


def test_needs_the_token_values_and_rejects_non_finite_ones() -> None:
    inputs = _random_case(1)
    missing = AdvantageInputs(rewards=inputs.rewards, dones=inputs.dones, turn_mask=inputs.turn_mask)
    with pytest.raises(ValueError, match="v_token"):
        get("token_gae")(missing)
    inputs.v_token[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        get("token_gae")(inputs)


def test_per_token_critic_reads_the_state_before_each_response_token() -> None:
    assert head_names(1, per_token=True) == ("token",)
    critic = ValueModel(PositionBackbone(), 4, 1, per_token=True)
    with torch.no_grad():
        critic.value_head.weight.zero_()
        critic.value_head.weight[0, 0] = 1.0  # the value reveals the input column it was read at
        critic.value_head.bias.zero_()
    prompt_width, resp_len = 6, 4
    ids = torch.zeros(2, prompt_width + resp_len, dtype=torch.long)
    vals = critic.read_values(ids, torch.ones_like(ids), prompt_width, torch.zeros(2, dtype=torch.long))
    # verl: values[:, -L - 1 : -1], i.e. input columns P - 1 .. P + L - 2
    assert vals["token"].tolist() == [[5.0, 6.0, 7.0, 8.0]] * 2


def test_the_config_builds_a_per_token_critic_and_validates_its_section() -> None:
    cfg = from_dict({"algorithm": {"adv_estimator": "token_gae", "token_gae": {"gamma": 0.99}}})
    est = estimator_config(cfg)
    assert isinstance(est, TokenGAEConfig) and est.gamma == 0.99 and est.lam == 1.0
    with pytest.raises(ConfigError, match="gamma"):
        from_dict({"algorithm": {"adv_estimator": "token_gae", "token_gae": {"gamma": 1.5}}})

    class Policy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.lm_head = PositionBackbone(), torch.nn.Linear(4, 3)

        def get_output_embeddings(self) -> torch.nn.Module:
            return self.lm_head

    policy = Policy()
    with pytest.raises(ValueError):
        head_names(2, per_token=True)
    critic = build_critic(cfg.critic, policy, ("token",))
    assert critic.heads == ("token",) and critic.per_token

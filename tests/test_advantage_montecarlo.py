"""Monte Carlo unbiasedness of HAE with gamma = lambda = lambda_seg = 1 and exact values (spec §5, Thm 4.2).

A tiny options MDP: 2 non-terminal states (+ a terminal one), 2 options, 2 actions, horizon 3. Each turn the agent
decides SWITCH with probability beta(s, o_prev) (forced at turn 0), samples a new option from pi_o(. | s) when it
switches, then an action from pi_a(. | s, o). True values are computed exactly by backward recursion:

* W_t(s, o)          = V^low(s, o)  = sum_a pi_a Q_t(s, o, a)
* Q_t(s, o, a)       = sum_s' P(s' | s, a) [R(s, a, s') + U_{t+1}(s', o) if not terminal]
* H_t(s)             = V^high(s)    = sum_o pi_o(o | s) W_t(s, o)       (value of re-planning at s)
* U_t(s, o_prev)     = beta H_t(s) + (1 - beta) W_t(s, o_prev)           (pre-decision value, the term head)

Sampled episodes are fed to ``hae`` with these exact values; the mean advantage per conditioning cell must be
within 3 standard errors of the true advantage (checked on the 10 most populated cells of each kind):
A^low = Q - W, A^high = W - H, A^term = Q^switch - U.
A negative control (bootstrapping with the pre-decision value instead of V^high) must be detected as biased.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hiper.advantage import GAEConfig, HAEConfig, hae, turn_gae

H_STEPS = 3
# options matter: each option mostly picks "its" action, and KEEP is likely where the kept option is good, so
# V^high(s) and the pre-decision value differ by up to ~2 (what the negative control needs to be visible)
BETA = np.array([[0.1, 0.6], [0.6, 0.1]])  # [s, o_prev] P(SWITCH)
PI_O = np.array([[0.5, 0.5], [0.4, 0.6]])  # [s, o]
PI_A = np.array([[[0.9, 0.1], [0.15, 0.85]], [[0.8, 0.2], [0.1, 0.9]]])  # [s, o, a]
P = np.array(
    [[[0.6, 0.2, 0.2], [0.2, 0.6, 0.2]], [[0.6, 0.2, 0.2], [0.2, 0.6, 0.2]]]
)  # [s, a, s'], 2 = terminal
R = np.array([[[3.0, 3.0, 10.0], [-1.0, -1.0, 0.0]], [[0.0, -2.0, -5.0], [2.0, 2.0, 8.0]]])  # [s, a, s']
N_EPISODES = 150_000
N_CELLS = 10  # the most populated conditioning cells of each check (bounds the multiple-comparison risk)


def exact_values():
    W = np.zeros((H_STEPS, 2, 2))
    Q = np.zeros((H_STEPS, 2, 2, 2))
    Hv = np.zeros((H_STEPS, 2))
    U = np.zeros((H_STEPS, 2, 2))
    for t in range(H_STEPS - 1, -1, -1):
        for s in range(2):
            for o in range(2):
                for a in range(2):
                    q = 0.0
                    for s2 in range(3):
                        cont = 0.0 if (s2 == 2 or t == H_STEPS - 1) else U[t + 1, s2, o]
                        q += P[s, a, s2] * (R[s, a, s2] + cont)
                    Q[t, s, o, a] = q
                W[t, s, o] = PI_A[s, o] @ Q[t, s, o]
            Hv[t, s] = PI_O[s] @ W[t, s]
        for s in range(2):
            for o in range(2):
                U[t, s, o] = BETA[s, o] * Hv[t, s] + (1 - BETA[s, o]) * W[t, s, o]
    return W, Q, Hv, U


def _categorical(rng, probs):
    """One sample per row of probs [N, k]."""
    u = rng.random(probs.shape[0])[:, None]
    return (u > np.cumsum(probs, axis=1)).sum(axis=1).clip(max=probs.shape[1] - 1)


def sample_episodes(n: int, seed: int):
    rng = np.random.default_rng(seed)
    rec = {k: np.zeros((n, H_STEPS), dtype=np.int64) for k in ("s", "o_prev", "q", "o", "a")}
    rewards = np.zeros((n, H_STEPS))
    dones = np.zeros((n, H_STEPS), dtype=bool)
    mask = np.zeros((n, H_STEPS), dtype=bool)
    s = rng.integers(0, 2, n)
    o_prev = np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    for t in range(H_STEPS):
        q = np.ones(n, dtype=bool) if t == 0 else rng.random(n) < BETA[s, o_prev]
        o = np.where(q, _categorical(rng, PI_O[s]), o_prev)
        a = _categorical(rng, PI_A[s, o])
        s2 = _categorical(rng, P[s, a])
        done = (s2 == 2) | (t == H_STEPS - 1)
        for k, v in (("s", s), ("o_prev", o_prev), ("q", q), ("o", o), ("a", a)):
            rec[k][:, t] = v
        rewards[:, t] = np.where(alive, R[s, a, s2], 0.0)
        dones[:, t] = alive & done
        mask[:, t] = alive
        alive = alive & ~done
        s = np.where(s2 == 2, 0, s2)
        o_prev = o
    return rec, rewards, dones, mask


def _cell_z(adv: np.ndarray, true: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per conditioning cell (a distinct row of ``keys``): z = (mean(adv) - true) / SE, and the cell's count."""
    code = np.zeros(len(keys), dtype=np.int64)
    for col in keys.T:  # small non-negative ints: mixed-radix code, then bincount statistics
        code = code * (int(col.max()) + 1) + col
    _, cell = np.unique(code, return_inverse=True)
    count = np.bincount(cell)
    err = adv - true
    mean_err = np.bincount(cell, weights=err) / count
    mean_adv = np.bincount(cell, weights=adv) / count
    var = np.bincount(cell, weights=adv**2) / count - mean_adv**2
    truth_spread = np.bincount(
        cell, weights=(true - np.bincount(cell, weights=true)[cell] / count[cell]) ** 2
    )
    assert np.all(truth_spread < 1e-12), "the true advantage must be constant within a cell"
    se = np.sqrt(np.maximum(var, 0.0) / count)
    z = np.where(
        se > 1e-12, mean_err / np.maximum(se, 1e-300), np.where(np.abs(mean_err) < 1e-9, 0.0, np.inf)
    )
    return z, count


def _cell_check(adv: np.ndarray, true: np.ndarray, keys: np.ndarray) -> tuple[float, int]:
    """Max |z| over the ``N_CELLS`` most populated cells, and how many cells that was."""
    z, count = _cell_z(adv, true, keys)
    top = np.argsort(-count, kind="stable")[:N_CELLS]
    return float(np.abs(z[top]).max()), len(top)


@pytest.fixture(scope="module")
def rollout():
    W, Q, Hv, U = exact_values()
    rec, rewards, dones, mask = sample_episodes(N_EPISODES, seed=2024)
    t_idx = np.broadcast_to(np.arange(H_STEPS), mask.shape)
    s, op, q, o, a = rec["s"], rec["o_prev"], rec["q"], rec["o"], rec["a"]
    values = {
        "v_low": W[t_idx, s, o],
        "v_high": Hv[t_idx, s],
        "v_term": np.where(t_idx == 0, Hv[t_idx, s], U[t_idx, s, op]),
        "q_low": Q[t_idx, s, o, a],
        "q_switch": np.where(q, Hv[t_idx, s], W[t_idx, s, op]),
    }
    return {"W": W, "Q": Q, "H": Hv, "U": U, "rec": rec, "rewards": rewards, "dones": dones, "mask": mask,
            "t": t_idx, **values}  # fmt: skip


def _hae(ro, v_high=None, **kw):
    tt = lambda x: torch.as_tensor(x)  # noqa: E731
    res = hae(
        tt(ro["rewards"]), tt(ro["dones"]), tt(ro["rec"]["q"].astype(bool)), tt(ro["v_low"]),
        tt(ro["v_high"] if v_high is None else v_high), tt(ro["v_term"]), tt(ro["mask"]),
        HAEConfig(gamma=1.0, lam=1.0, lam_seg=1.0, bootstrap_truncated=False), **kw,
    )  # fmt: skip
    return res


def test_low_level_advantage_is_unbiased(rollout):
    ro = rollout
    res = _hae(ro)
    m = ro["mask"]
    rec = ro["rec"]
    keys = np.stack([ro["t"][m], rec["s"][m], rec["o"][m], rec["a"][m]], axis=1)
    z, n_cells = _cell_check(res.adv_low.numpy()[m], (ro["q_low"] - ro["v_low"])[m], keys)
    assert n_cells == N_CELLS
    assert z < 3.0, f"low-level advantage biased: max |z| = {z:.2f}"


def test_high_level_advantage_is_unbiased(rollout):
    ro = rollout
    res = _hae(ro)
    b = res.boundary.numpy()
    rec = ro["rec"]
    keys = np.stack([ro["t"][b], rec["s"][b], rec["o"][b]], axis=1)
    true = (ro["W"][ro["t"], rec["s"], rec["o"]] - ro["H"][ro["t"], rec["s"]])[b]
    z, n_cells = _cell_check(res.adv_high.numpy()[b], true, keys)
    assert n_cells == N_CELLS
    assert z < 3.0, f"high-level advantage biased: max |z| = {z:.2f}"


def test_term_advantage_estimates_the_switch_advantage(rollout):
    """Code mode: E[GT - VT | s, o_prev, q] = Q^switch(s, o_prev, q) - U(s, o_prev)."""
    ro = rollout
    res = _hae(ro)
    m = ro["mask"]
    rec = ro["rec"]
    keys = np.stack([ro["t"][m], rec["s"][m], rec["o_prev"][m] * (ro["t"][m] > 0), rec["q"][m]], axis=1)
    z, n_cells = _cell_check(res.adv_term.numpy()[m], (ro["q_switch"] - ro["v_term"])[m], keys)
    assert n_cells == N_CELLS
    assert z < 3.0, f"term advantage biased: max |z| = {z:.2f}"


def test_paper_switch_advantage_equals_true_switch_advantage(rollout):
    """(q - beta)(V^high - V^low(s, o_prev)) is exactly Q^switch - V^switch for a Bernoulli switch (no sampling)."""
    ro = rollout
    rec = ro["rec"]
    t = ro["t"]
    beta = np.where(t == 0, 1.0, BETA[rec["s"], rec["o_prev"]])
    v_low_keep = np.where(t == 0, 0.0, ro["W"][t, rec["s"], rec["o_prev"]])
    res = hae(
        torch.as_tensor(ro["rewards"]), torch.as_tensor(ro["dones"]), torch.as_tensor(rec["q"].astype(bool)),
        torch.as_tensor(ro["v_low"]), torch.as_tensor(ro["v_high"]), None, torch.as_tensor(ro["mask"]),
        HAEConfig(switch_mode="paper"), beta=torch.as_tensor(beta), v_low_keep=torch.as_tensor(v_low_keep),
    )  # fmt: skip
    m = ro["mask"]
    np.testing.assert_allclose(res.adv_term.numpy()[m], (ro["q_switch"] - ro["v_term"])[m], atol=1e-10)


def test_flat_gae_with_pre_decision_value_is_unbiased(rollout):
    ro = rollout
    tt = torch.as_tensor
    adv, _ = turn_gae(
        tt(ro["rewards"]), tt(ro["dones"]), tt(ro["v_term"]), tt(ro["mask"]), GAEConfig(lam=1.0)
    )
    m = ro["mask"]
    rec = ro["rec"]
    keys = np.stack([ro["t"][m], rec["s"][m], rec["o_prev"][m] * (ro["t"][m] > 0), rec["q"][m]], axis=1)
    z, _ = _cell_check(adv.numpy()[m], (ro["q_switch"] - ro["v_term"])[m], keys)
    assert z < 3.0, f"flat GAE biased: max |z| = {z:.2f}"


def test_negative_control_wrong_bootstrap_is_detected(rollout):
    """Bootstrapping segment ends with the pre-decision value U instead of V^high biases the low level; the cell
    statistics must see it (else the checks above would have no power)."""
    ro = rollout
    res = _hae(ro, v_high=ro["v_term"])
    m = ro["mask"]
    rec = ro["rec"]
    keys = np.stack([ro["t"][m], rec["s"][m], rec["o"][m], rec["a"][m]], axis=1)
    z, _ = _cell_z(res.adv_low.numpy()[m], (ro["q_low"] - ro["v_low"])[m], keys)
    assert np.abs(z).max() > 5.0, f"biased estimator not detected: max |z| = {np.abs(z).max():.2f}"

"""SFT warm start: expert examples are rendered in the protocol and training lowers the response NLL."""

from __future__ import annotations

import pytest
import torch

from hiper.models.policy import build_tiny_model
from hiper.models.tokenizer import household_tokenizer
from hiper.protocol import compact_renderer, parse_response
from hiper.trainer import sft


@pytest.fixture(scope="module")
def setup():
    from hiper.envs import make_batch, task_panel
    from hiper.rollout.manager import EnvManager

    tok = household_tokenizer("household", {"difficulty": "tiny"})
    manager = EnvManager(make_batch("household", difficulty="tiny"), family="household", renderer=compact_renderer)
    trajs = sft.expert_trajectories(manager, task_panel("household", "train", n=4, seed=1))
    return tok, trajs


def test_examples_are_protocol_responses(setup) -> None:
    tok, trajs = setup
    examples = sft.examples_from_trajectories(trajs, tok)
    assert len(examples) == sum(t.length for t in trajs)
    assert all(t.won for t in trajs)
    for ex in examples[:5]:
        assert ex.response_ids[-1] == tok.eos_token_id
        text = tok.decode(ex.response_ids, skip_special_tokens=True)
        parsed = parse_response(text, strict=True)
        assert parsed.valid, text
        assert tok.decode(ex.prompt_ids).endswith("<|assistant|>\n")


@pytest.mark.parametrize("prompt_loss_weight", [0.0, 0.5])
def test_sft_lowers_nll(setup, prompt_loss_weight: float) -> None:
    tok, trajs = setup
    examples = sft.examples_from_trajectories(trajs, tok)
    model = build_tiny_model(tok, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "num_key_value_heads": 1}, seed=0)
    before = sft.mean_nll(model, examples, tok.pad_token_id)
    rng_before = torch.get_rng_state()
    res = sft.sft_train(model, examples, tok.pad_token_id, epochs=3, lr=3e-3, batch_size=8, micro_batch_size=4,
                        prompt_loss_weight=prompt_loss_weight)
    after = sft.mean_nll(model, examples, tok.pad_token_id)
    assert res["skipped"] == 0 and res["steps"] == 3 * ((len(examples) + 7) // 8)
    assert after < before - 1.0, (before, after)
    assert torch.equal(rng_before, torch.get_rng_state())  # shuffling used its own generator


def test_sft_rejects_empty() -> None:
    with pytest.raises(ValueError):
        sft.sft_train(torch.nn.Linear(1, 1), [], 0)


def test_sft_max_steps_caps_optimizer_steps(setup) -> None:
    tok, trajs = setup
    examples = sft.examples_from_trajectories(trajs, tok)
    assert len(examples) >= 16
    model = build_tiny_model(tok, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "num_key_value_heads": 1}, seed=0)
    full = sft.sft_train(model, examples[:16], tok.pad_token_id, epochs=2, batch_size=4)
    capped = sft.sft_train(model, examples[:16], tok.pad_token_id, epochs=2, batch_size=4, max_steps=3)
    assert full["steps"] == 8 and capped["steps"] == 3 and len(capped["losses"]) == 3


def test_sft_with_a_huge_learning_rate_stops_naming_sft_lr(setup) -> None:
    from hiper.losses import UpdatesDiverged

    tok, trajs = setup
    examples = sft.examples_from_trajectories(trajs, tok)
    model = build_tiny_model(tok, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "num_key_value_heads": 1}, seed=0)
    with pytest.raises(UpdatesDiverged, match="lower sft.lr"):
        sft.sft_train(model, examples, tok.pad_token_id, epochs=3, lr=1e9, batch_size=4, max_bad_steps=3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_packed_losses_equal_one_example_at_a_time(setup) -> None:
    """A packed batch (examples of different lengths side by side, padding after) gives each example's own NLL:
    the response and prompt sums and token counts of the batch equal those of the examples one by one."""
    tok, trajs = setup
    examples = sft.examples_from_trajectories(trajs, tok)[:7]
    model = build_tiny_model(tok, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "num_key_value_heads": 1}).eval()
    pad = tok.pad_token_id
    with torch.no_grad():
        r, n_r, p, n_p = sft.full_nll_sums(model, examples, pad)
        one = [sft.full_nll_sums(model, [e], pad) for e in examples]
        nll, n = sft.nll_sum(model, examples, pad)
    assert n_r == n == sum(len(e.response_ids) for e in examples) == sum(o[1] for o in one)
    assert n_p == sum(len(e.prompt_ids) - 1 for e in examples) == sum(o[3] for o in one)
    assert float(r) == pytest.approx(sum(float(o[0]) for o in one), rel=1e-5)
    assert float(nll) == pytest.approx(float(r), rel=1e-5)
    assert float(p) == pytest.approx(sum(float(o[2]) for o in one), rel=1e-5)


def test_two_thread_sft_takes_the_same_steps(setup) -> None:
    """parallel=True (half of each micro-batch on a replica thread) trains to the same weights as one thread, up to
    float rounding, and leaves no gradient behind."""
    tok, trajs = setup
    examples = sft.examples_from_trajectories(trajs, tok)
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1}
    out = []
    for parallel in (False, True):
        model = build_tiny_model(tok, tiny)
        res = sft.sft_train(model, examples, tok.pad_token_id, epochs=1, lr=1e-3, batch_size=5, seed=2,
                            prompt_loss_weight=0.5, parallel=parallel)
        out.append((model, res))
    (a, ra), (b, rb) = out
    assert ra["steps"] == rb["steps"] > 2
    assert rb["losses"] == pytest.approx(ra["losses"], rel=1e-4)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name


def noisy_trajectories(noise: float, seed: int, n: int = 12):
    from hiper.envs import make_batch, task_panel
    from hiper.rollout.manager import EnvManager

    manager = EnvManager(make_batch("household", difficulty="tiny"), family="household", renderer=compact_renderer,
                         history_length=4)
    return sft.expert_trajectories(manager, task_panel("household", "train", n=n, seed=1), noise=noise, seed=seed)


def test_noisy_expert_recovers_and_perturbed_turns_are_not_cloned(setup) -> None:
    """DART-style noise (sft.noise): some turns execute a perturbation (the previous action, often inadmissible, or
    a random admissible one); the expert carries on from the state it left, so later turns show recoveries from
    "Nothing happens."; the perturbed turns are context only and never become examples."""
    tok, _ = setup
    trajs = noisy_trajectories(0.3, seed=0)
    perturbed = [t for tr in trajs for t in tr.turns if t.extras.get("perturbed")]
    clean = [t for tr in trajs for t in tr.turns if not t.extras.get("perturbed")]
    assert perturbed and clean
    assert all(tr.turns[0].extras.get("perturbed") is None for tr in trajs)  # never the first turn
    assert any(not t.admissible_action for t in perturbed)  # some perturbations are inadmissible actions
    # a clone-able turn right after an inadmissible perturbation: the recovery a noise-free expert never shows
    recoveries = [b for tr in trajs for a, b in zip(tr.turns, tr.turns[1:])
                  if a.extras.get("perturbed") and not a.admissible_action and not b.extras.get("perturbed")]
    assert recoveries and all("Nothing happens." in b.prompt for b in recoveries)
    assert sum(tr.won for tr in trajs) >= len(trajs) - 2  # the expert still finishes almost every task
    examples = sft.examples_from_trajectories(trajs, tok)
    assert len(examples) == len(clean)
    texts = {tok.decode(ex.response_ids, skip_special_tokens=True) for ex in examples}
    assert all(t.response in texts for t in clean)


def test_noisy_expert_is_seeded_and_noise_zero_is_the_plain_expert(setup) -> None:
    a, b, c = noisy_trajectories(0.3, seed=0), noisy_trajectories(0.3, seed=0), noisy_trajectories(0.3, seed=1)
    actions = [[t.action for t in tr.turns] for tr in a]
    assert actions == [[t.action for t in tr.turns] for tr in b]
    assert actions != [[t.action for t in tr.turns] for tr in c]
    plain, zero = noisy_trajectories(0.0, seed=0), noisy_trajectories(0.0, seed=5)
    assert [[t.response for t in tr.turns] for tr in plain] == [[t.response for t in tr.turns] for tr in zero]
    assert not any(t.extras for tr in plain for t in tr.turns)
    with pytest.raises(ValueError, match="noise must be in"):
        from hiper.rollout.policies import ExpertPolicy

        ExpertPolicy(object.__new__(type("S", (), {"expert": None})), noise=1.0)

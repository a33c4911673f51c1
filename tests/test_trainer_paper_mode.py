"""HAE ``switch_mode=paper`` in the built-in trainer (spec §3.7, §7.1 Mode B): the actor's beta, the critic's
V^low(s_t, o_{t-1}) on the KEEP continuation, and a paper-mode training run end to end."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from hiper.batch import TurnBatch, keep_continuation_ids
from hiper.config import ConfigError, estimator_config
from hiper.models.tokenizer import household_tokenizer
from hiper.protocol import SWITCH_CONTINUATIONS, Switch, chat_prompt, format_response, keep_continuation
from hiper.trainer import algorithm, forward, sft
from hiper.trainer.algorithm import Scores, Targets
from hiper.trainer.trainer import Trainer


def paper_config(mode: str = "paper", **sections: dict) -> dict:
    cfg: dict[str, Any] = {
        "seed": 5,
        "env": {"name": "household", "kwargs": {"difficulty": "tiny"}, "max_steps": 3, "history_length": 2,
                "n_envs": 4, "group_size": 1, "eval_episodes": 2, "prompt": "compact", "train_pool_size": 64},
        "model": {"tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 2}},
        "critic": {"enabled": True, "lr": 1e-3, "cliprange_value": 0.5, "micro_batch_size": 3},
        "actor": {"lr": 1e-3, "kl_coef": 0.01, "mini_batch_size": 6, "micro_batch_size": 3,
                  "invalid_action_penalty_coef": 0.1},
        "rollout": {"temperature": 1.0, "max_new_tokens": 12, "eval_temperature": 0.0},
        "algorithm": {"adv_estimator": "hae", "reward_scale": 0.1,
                      "hae": {"keep_penalty": -0.3, "keep_consistency_penalty": -0.3, "switch_mode": mode}},
        "sft": {"enabled": False},
        "trainer": {"total_iterations": 1, "eval_every": 0, "num_threads": 1},
    }
    for name, values in sections.items():
        cfg[name].update(values)
    return cfg


@pytest.fixture(scope="module")
def household_tok() -> Any:
    return household_tokenizer("household", {"difficulty": "tiny"})


@pytest.fixture(params=["qwen", "builtin"])
def any_tok(request: pytest.FixtureRequest) -> Any:
    """The real Qwen2.5 tokenizer (``>\\n`` merges after ``</subgoal>``) and the builtin one (tags are tokens)."""
    return request.getfixturevalue("tokenizer" if request.param == "qwen" else "household_tok")


def expert_batch(trainer: Trainer, n_tasks: int = 3) -> tuple[TurnBatch, list[Any], list[Any]]:
    """Expert episodes (canonical KEEP copies and SWITCH turns) tokenized like engine rollouts."""
    tok = trainer.tokenizer
    trajs = sft.expert_trajectories(trainer.manager("train"), trainer.tasks_for_iteration(0)[:n_tasks])
    records = []
    for traj in trajs:
        for rec in traj.turns:
            rec.extras["prompt_ids"] = tok(chat_prompt(tok, rec.prompt), add_special_tokens=False)["input_ids"]
            rec.extras["response_ids"] = tok(rec.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            records.append(rec)
    return TurnBatch.from_trajectories(trajs, trainer.table, trainer.pad_id), records, trajs


def is_exact_keep(rec: Any) -> bool:
    return rec.parsed.decision is Switch.KEEP and rec.response.startswith(keep_continuation(rec.current_subgoal))


def test_keep_continuation_is_the_canonical_keep_prefix(any_tok) -> None:
    for subgoal, action in (("find the mug", "go to desk 1"), ("put the vase on the shelf.", "look")):
        assert format_response("KEEP", subgoal, action).startswith(keep_continuation(subgoal))
    assert keep_continuation(None) == keep_continuation("  ") == "<switch>KEEP</switch>\n<subgoal>None</subgoal>\n"
    ids, mask = keep_continuation_ids(any_tok, _table(any_tok), ["find the mug", "None"])
    assert ids.shape[0] == 2 and bool(mask[:, 0].all())
    last = any_tok.decode([int(ids[0, int(mask[0].sum()) - 1])])
    # cut right after ``</subgoal>``: Qwen2.5's ``>\n`` token stays, a separate ``\n`` token is dropped
    assert last in (">\n", "</subgoal>"), last


def beta_of(trainer: Trainer, batch: TurnBatch) -> torch.Tensor:
    cont = forward.switch_continuation_ids(trainer.tokenizer, trainer.pad_id)
    cfg = trainer.config
    return forward.switch_prob(batch, trainer.policy, cont, cfg.actor.micro_batch_size, cfg.rollout.temperature,
                               trainer.device)


def _table(tok: Any) -> Any:
    from hiper.protocol.spans import TokenByteTable

    return TokenByteTable.from_tokenizer(tok)


def test_beta_matches_a_plain_forward(any_tok) -> None:
    """beta = p_S / (p_S + p_K) of the full ``<switch>SWITCH`` / ``<switch>KEEP`` token sequences, at the rollout
    temperature, equals a hand computation with the plain causal-LM forward (no cache, no padding)."""
    temperature = 0.7
    trainer = Trainer(paper_config(rollout={"temperature": temperature}), tokenizer=any_tok)
    batch, _, _ = expert_batch(trainer)
    beta = beta_of(trainer, batch)
    assert beta.shape == (len(batch),)
    assert bool(((beta >= 0) & (beta <= 1)).all())
    assert float(beta.std()) > 0  # it depends on the prompt
    conts = [any_tok(t, add_special_tokens=False)["input_ids"] for t in SWITCH_CONTINUATIONS]
    for i in (0, len(batch) // 2, len(batch) - 1):
        prompt = batch.prompt_ids[i][batch.prompt_mask[i]].tolist()
        seq_logp = []
        with torch.no_grad():
            for cont in conts:
                logits = trainer.policy(input_ids=torch.tensor([prompt + cont])).logits[0].float() / temperature
                logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
                seq_logp.append(float(logp.gather(-1, torch.tensor(cont)[:, None]).sum()))
        expected = math.exp(seq_logp[0]) / (math.exp(seq_logp[0]) + math.exp(seq_logp[1]))
        assert float(beta[i]) == pytest.approx(expected, abs=1e-5)
        assert float(torch.logit(beta[i].double())) == pytest.approx(seq_logp[0] - seq_logp[1], abs=1e-3)


@pytest.mark.parametrize("critic_mode", ["separate", "shared"])
def test_low_keep_equals_main_low_on_exact_keep_turns(any_tok, critic_mode: str) -> None:
    trainer = Trainer(paper_config(critic={"mode": critic_mode}), tokenizer=any_tok)
    trainer.setup_rl()
    with torch.no_grad():  # values of order 1, so that equal / different is a meaningful check
        trainer.critic.value_head.weight.mul_(100.0)
    batch, records, trajs = expert_batch(trainer)
    batch = batch.with_keep_continuations(any_tok, trainer.table, trajs)
    values = forward.values(batch, trainer.critic, trainer.config.critic.micro_batch_size, trainer.device)
    assert set(values) == {"low", "high", "low_keep"}

    keep_rows = [i for i, r in enumerate(records) if is_exact_keep(r)]
    switch_rows = [i for i, r in enumerate(records) if r.parsed.switch and r.subgoal != r.current_subgoal]
    assert keep_rows and switch_rows
    for i in keep_rows:  # same tokens up to the read position as the main pass
        k = int(batch.keep_mask[i].sum())
        assert torch.equal(batch.response_ids[i, :k], batch.keep_ids[i, :k]) and int(batch.v_low_pos[i]) == k
    assert torch.equal(torch.nonzero(batch.exact_keep()).flatten(), torch.tensor(keep_rows))
    keep_rows_t, switch_rows_t = torch.tensor(keep_rows), torch.tensor(switch_rows)
    assert torch.allclose(values["low_keep"][keep_rows_t], values["low"][keep_rows_t], atol=1e-4)
    assert values["low"].abs().mean() > 0.05
    assert bool(((values["low_keep"][switch_rows_t] - values["low"][switch_rows_t]).abs() > 1e-3).all())

    # and V^low(s_t, o_{t-1}) itself equals a plain forward of the critic on [prompt | KEEP continuation]
    for i in switch_rows[:2]:
        k = int(batch.keep_mask[i].sum())
        ids = torch.cat([batch.prompt_ids[i][batch.prompt_mask[i]], batch.keep_ids[i, :k]])[None]
        with torch.no_grad():
            h = trainer.critic.backbone(input_ids=ids).last_hidden_state[0, -1]
            expected = trainer.critic.value_head(h)[0]
        assert float(values["low_keep"][i]) == pytest.approx(float(expected), abs=1e-4)


def _check_switch_advantage(batch: TurnBatch, scores: Scores, targets: Targets) -> None:
    """Raw per-turn switch advantage = (q - beta)(VH - VL_keep); tokens of the switch block carry it whitened."""
    q = batch.switch.float()
    v = scores.values
    expected = (q - scores.beta) * (v["high"] - v["low_keep"])
    assert torch.allclose(targets.turn_advantages["switch"], expected, atol=1e-6)
    has_span = batch.switch_mask.any(1)
    if int(has_span.sum()) >= 2:
        raw = expected[has_span]
        white = (raw - raw.mean()) / (raw.std(unbiased=False) + 1e-8)
        only_switch = batch.switch_mask & ~batch.action_mask
        rows = torch.nonzero(has_span).flatten()
        for j, i in enumerate(rows.tolist()):
            tok = only_switch[i]
            if bool(tok.any()):
                assert torch.allclose(targets.advantages[i, tok], white[j].expand(int(tok.sum())), atol=1e-4)
            assert bool((targets.loss_mask[i] >= batch.switch_mask[i]).all())


def test_paper_mode_advantages_on_expert_turns(household_tok) -> None:
    """KEEP and SWITCH turns (q = 0 and 1) through the trainer's advantage step."""
    trainer = Trainer(paper_config(), tokenizer=household_tok)
    batch, _, trajs = expert_batch(trainer)
    batch, scores = algorithm.score(trainer.config, trainer.learner(), batch, trajs)
    targets, metrics = algorithm.advantages(trainer.config, batch, scores)
    assert bool(batch.switch.any()) and bool((~batch.switch).any())
    _check_switch_advantage(batch, scores, targets)
    assert set(targets.returns) == {"low", "high"}
    for key in ("switch/beta_mean", "switch/gain_abs_mean", "switch/adv_raw_mean", "switch/adv_raw_std",
                "switch/beta_on_switch", "switch/beta_on_keep", "switch/low_keep_gap_exact"):
        assert math.isfinite(metrics[key]), key
    v = scores.values
    assert metrics["switch/gain_abs_mean"] == pytest.approx(float((v["high"] - v["low_keep"]).abs().mean()), rel=1e-5)
    # the expert's KEEP copies are exact: VL_keep = VL there
    exact = batch.exact_keep()
    assert torch.equal(exact, ~batch.switch & (batch.turn_index > 0))
    assert metrics["switch/keep_exact_rate"] == pytest.approx(float(exact.float().mean()))
    assert metrics["switch/low_keep_gap_exact"] < 1e-5


def test_paper_mode_training_run(household_tok) -> None:
    logged: list[dict] = []
    cfg = paper_config(trainer={"total_iterations": 2, "eval_every": 0, "num_threads": 1})
    trainer = Trainer(cfg, tokenizer=household_tok, callbacks=[lambda m, s: logged.append(m)])
    assert trainer.paper_mode
    history = trainer.train()
    assert len(history) == 2 and trainer.critic is not None and trainer.critic.heads == ("low", "high")
    last = trainer.last
    batch = last.batch
    assert last.scores.beta is not None and "low_keep" in last.scores.values
    _check_switch_advantage(batch, last.scores, last.targets)
    # o_{t-1} is the subgoal the prompt showed (the manager's current subgoal; "None" until one is adopted,
    # carried over unchanged through invalid turns)
    records = [rec for traj in trainer.manager("train").trajectories() for rec in traj.turns]
    assert len(records) == len(batch) and batch.prev_subgoals[0] == "None"
    for g, rec in zip(batch.prev_subgoals, records):
        assert f"subgoal: {g}\n" in rec.prompt
    for m in logged:
        for key in ("switch/beta_mean", "switch/gain_abs_mean", "switch/adv_raw_mean", "time/switch_prob",
                    "critic/value_loss_low", "critic/value_loss_high"):
            assert math.isfinite(m[key]), key
        assert "critic/value_loss_term" not in m
        assert m["actor/skipped_steps"] == 0 and m["critic/skipped_steps"] == 0


def test_code_mode_is_unchanged(household_tok) -> None:
    trainer = Trainer(paper_config("code"), tokenizer=household_tok)
    metrics = trainer.iteration()
    last = trainer.last
    assert trainer.critic.heads == ("low", "high", "term")
    assert last.scores.beta is None and last.batch.keep_ids is None and "low_keep" not in last.scores.values
    assert not any(k.startswith("switch/") for k in metrics) and "time/switch_prob" not in metrics
    assert set(last.targets.returns) == {"low", "high", "term"}
    with pytest.raises(ConfigError, match="algorithm.hae.switch_mode must be one of"):
        Trainer(paper_config("papr"), tokenizer=household_tok)


def test_typed_config_runs_paper_mode() -> None:
    from hiper.config import load_config

    cfg = load_config("cpu_demo", ["algorithm.hae.switch_mode=paper"])
    assert cfg.algorithm.hae.switch_mode == "paper"
    trainer = Trainer(cfg)
    trainer.setup_rl()
    assert trainer.paper_mode and trainer.critic.heads == ("low", "high")
    assert estimator_config(cfg).switch_mode == "paper"

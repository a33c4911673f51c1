"""Trainer end to end on CPU with a tiny model: every estimator, exact resume, NaN safety, ALFWorld."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hiper import losses as ppo
from hiper.config import ConfigError, HiperConfig
from hiper.models.tokenizer import household_tokenizer
from hiper.trainer import algorithm, forward
from hiper.trainer.trainer import Trainer, as_config


def tiny_config(estimator: str = "hae", **sections) -> dict:
    cfg = {
        "seed": 3,
        "env": {"name": "household", "kwargs": {"difficulty": "tiny"}, "max_steps": 3, "history_length": 2,
                "n_envs": 4, "group_size": 2 if estimator in ("grpo", "rloo", "gigpo") else 1,
                "eval_episodes": 2, "prompt": "compact", "train_pool_size": 64},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "num_key_value_heads": 1}, "tokenizer": "builtin"},
        "critic": {"enabled": estimator in ("hae", "gae", "token_gae"), "lr": 1e-3, "cliprange_value": 0.5},
        "actor": {"lr": 1e-3, "kl_coef": 0.01, "entropy_coeff": 0.001, "mini_batch_size": 6, "micro_batch_size": 4,
                  "invalid_action_penalty_coef": 0.1},
        "rollout": {"temperature": 1.0, "max_new_tokens": 12, "eval_temperature": 0.0},
        "algorithm": {"adv_estimator": estimator, "reward_scale": 0.1,
                      "hae": {"keep_penalty": -0.3, "keep_consistency_penalty": -0.3}},
        "sft": {"enabled": False, "episodes": 4, "epochs": 1, "lr": 1e-3, "batch_size": 8},
        "trainer": {"total_iterations": 1, "eval_every": 0, "num_threads": 1},
    }
    for name, values in sections.items():
        cfg[name].update(values)
    return cfg


@pytest.fixture(scope="module")
def tokenizer():
    return household_tokenizer("household", {"difficulty": "tiny"})


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"policy.{k}": v.detach().clone() for k, v in trainer.policy.state_dict().items()}
    if trainer.critic is not None:
        out.update({f"critic.{k}": v.detach().clone() for k, v in trainer.critic.state_dict().items()})
    return out


@pytest.mark.parametrize("estimator", ["hae", "gae", "token_gae", "grpo", "rloo", "gigpo"])
def test_one_iteration_per_estimator(estimator: str, tokenizer) -> None:
    trainer = Trainer(tiny_config(estimator), tokenizer=tokenizer)
    metrics = trainer.iteration()
    batch, targets = trainer.last.batch, trainer.last.targets
    assert len(batch) == metrics["perf/turn_samples"] > 0
    assert targets.advantages.shape == batch.response_ids.shape
    assert torch.isfinite(targets.advantages).all()
    assert not (targets.loss_mask & ~batch.response_mask).any()  # loss only on generated tokens
    assert metrics["actor/steps"] >= 1 and metrics["actor/skipped_steps"] == 0
    assert math.isfinite(metrics["actor/pg_loss"])
    if estimator == "hae":
        assert set(targets.returns) == {"low", "high", "term"}
        assert "critic/value_loss_low" in metrics and math.isfinite(metrics["critic/value_loss_low"])
    elif estimator == "gae":
        assert set(targets.returns) == {"turn"}
    elif estimator == "token_gae":  # one critic target per response token, trained on every response token
        assert set(targets.returns) == {"token"}
        assert targets.returns["token"].shape == batch.response_ids.shape
        assert torch.equal(targets.value_mask["token"], batch.response_mask)
        assert math.isfinite(metrics["critic/value_loss_token"])
    else:
        assert trainer.critic is None
    for key in ("time/generate", "time/env", "time/critic", "time/advantage", "time/update", "train/success",
                "train/episode_length", "train/switch_rate", "train/invalid_rate", "train/segment_length"):
        assert key in metrics, key


def test_resume_is_bit_identical(tokenizer, tmp_path) -> None:
    cfg = tiny_config("hae")
    straight = Trainer(cfg, tokenizer=tokenizer)
    for _ in range(4):
        straight.iteration()

    first = Trainer(cfg, tokenizer=tokenizer)
    for _ in range(2):
        first.iteration()
    path = first.save_checkpoint(str(tmp_path))  # the one persistence path: a checkpoint folder
    resumed = Trainer(copy.deepcopy(cfg), tokenizer=tokenizer)
    resumed.load_checkpoint(path)
    assert resumed.iteration_count == 2
    for _ in range(2):
        resumed.iteration()

    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the next iteration computes bit-identical advantages
    straight.iteration()
    resumed.iteration()
    assert torch.equal(straight.last.targets.advantages, resumed.last.targets.advantages)
    assert torch.equal(straight.last.batch.response_ids, resumed.last.batch.response_ids)


def test_nan_loss_leaves_weights_untouched(tokenizer, monkeypatch) -> None:
    trainer = Trainer(tiny_config("hae"), tokenizer=tokenizer)
    trainer.setup_rl()
    before = _params(trainer)
    real_actor, real_value = ppo.actor_loss_sum, ppo.value_loss_terms

    def nan_actor(*args, **kwargs):
        loss, stats = real_actor(*args, **kwargs)
        return loss * float("nan"), stats

    def nan_value(*args, **kwargs):
        loss, n = real_value(*args, **kwargs)
        return loss + float("nan"), n

    monkeypatch.setattr(ppo, "actor_loss_sum", nan_actor)
    monkeypatch.setattr(ppo, "value_loss_terms", nan_value)
    metrics = trainer.iteration()
    assert metrics["actor/skipped_steps"] == metrics["actor/steps"] >= 1
    assert metrics["critic/skipped_steps"] == metrics["critic/steps"] >= 1
    after = _params(trainer)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not trainer.actor_opt.state  # no optimizer moments from the bad batch either


def test_evaluate_and_train_loop(tokenizer) -> None:
    cfg = tiny_config("hae", trainer={"total_iterations": 2, "eval_every": 2, "num_threads": 1},
                      sft={"enabled": True, "episodes": 2, "epochs": 1, "batch_size": 4})
    logged = []
    trainer = Trainer(cfg, tokenizer=tokenizer, callbacks=[lambda m, s: logged.append((s, m))])
    history = trainer.train()
    evals = [h for h in history if "eval/success" in h]
    assert [h["iteration"] for h in evals] == [0, 2]
    assert history[0]["sft/nll_after"] < history[0]["sft/nll_before"]
    assert any("time/iteration" in m for _, m in logged)


def test_alfworld_one_iteration() -> None:
    pytest.importorskip("alfworld", reason="needs the alfworld extra")
    pytest.importorskip("textworld", reason="needs the alfworld extra")
    pytest.importorskip("fast_downward", reason="needs fast-downward-textworld (alfworld extra)")
    from hiper.envs.data import alfworld_data_available

    if not alfworld_data_available():
        pytest.skip("ALFWorld game files not found (see docs/envs_alfworld.md)")
    from hiper.models.tokenizer import build_demo_tokenizer

    tok = build_demo_tokenizer(["<switch>KEEP</switch><subgoal>go</subgoal><action>look</action>"] * 4 +
                               ["You are in the middle of a room. go to cabinet 1, take apple 1 from fridge 1"] * 4,
                               vocab_size=400)
    cfg = tiny_config("hae", env={"name": "alfworld", "kwargs": {}, "max_steps": 2, "n_envs": 2,
                                  "train_pool_size": 2, "group_size": 1, "prompt": "default"})
    cfg["rollout"]["max_prompt_length"] = 100000
    trainer = Trainer(cfg, tokenizer=tok)
    metrics = trainer.iteration()
    assert metrics["perf/turn_samples"] >= 2 and metrics["actor/skipped_steps"] == 0


def test_resume_through_checkpoint_folder(tokenizer, tmp_path) -> None:
    """The infra checkpoint writer (hiper.trainer.checkpoint) round-trips the trainer exactly."""
    cfg = tiny_config("hae", actor={"kl_coef": 0.01})
    straight = Trainer(cfg, tokenizer=tokenizer)
    for _ in range(2):
        straight.iteration()
    first = Trainer(cfg, tokenizer=tokenizer)
    first.iteration()
    path = first.save_checkpoint(str(tmp_path))
    resumed = Trainer(copy.deepcopy(cfg), tokenizer=tokenizer)
    resumed.load_checkpoint(path)
    assert resumed.iteration_count == 1 and resumed.reference is not None
    resumed.iteration()
    a, b = _params(straight), _params(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_rollout_logprobs_match_teacher_forced(tokenizer) -> None:
    """The engine's log-probs (used with actor.use_rollout_logprobs) equal the teacher-forced pass."""
    from hiper.batch import TurnBatch

    trainer = Trainer(tiny_config("grpo"), tokenizer=tokenizer)
    trajs, _ = algorithm.rollout(trainer.config, trainer.learner(), trainer.manager("train"),
                                 trainer.tasks_for_iteration(0), 1, 1.0, seed=5)
    batch = TurnBatch.from_trajectories(trajs, trainer.table, trainer.pad_id)
    assert batch.rollout_logprobs is not None
    recomputed = forward.logprobs(batch, trainer.policy, 4, 1.0, trainer.device)
    m = batch.response_mask
    assert torch.allclose(batch.rollout_logprobs[m], recomputed[m], atol=1e-4)


def test_dict_config_goes_through_the_schema() -> None:
    """``Trainer(dict)`` and ``hiper train`` read the same typed config: missing keys take the schema's defaults
    (no second set of defaults), unknown keys and bad values are refused the same way."""
    cfg = as_config({"actor": {"lr": 3e-4}})
    assert cfg.actor.lr == 3e-4
    assert cfg.critic.lr == HiperConfig().critic.lr and cfg.sft.epochs == HiperConfig().sft.epochs
    assert cfg.actor.invalid_action_penalty_coef == HiperConfig().actor.invalid_action_penalty_coef
    with pytest.raises(ConfigError, match="unknown config key 'actor.lrr'"):
        Trainer({"actor": {"lrr": 1e-3}})
    with pytest.raises(ConfigError, match="actor.lr=-1.0 must be > 0"):
        Trainer({"actor": {"lr": -1.0}})


@pytest.mark.parametrize("estimator", ["hae", "gae", "token_gae"])
def test_parallel_phases_are_bit_identical(estimator: str, tokenizer) -> None:
    """Reference log-probs with critic values, and the critic update with the actor update, on two threads give
    exactly the sequential result (trainer.parallel_phases)."""
    runs = {}
    for parallel in (False, True):
        trainer = Trainer(tiny_config(estimator, trainer={"total_iterations": 2, "eval_every": 0, "num_threads": 1,
                                                          "parallel_phases": parallel}), tokenizer=tokenizer)
        metrics = [trainer.iteration() for _ in range(2)]
        runs[parallel] = (trainer, metrics)
    (seq, m_seq), (par, m_par) = runs[False], runs[True]
    a, b = _params(seq), _params(par)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(seq.last.targets.advantages, par.last.targets.advantages)
    for key in ("actor/pg_loss", "critic/loss", "actor/kl"):
        assert m_seq[-1][key] == m_par[-1][key], key
    assert {"time/critic_update", "time/actor_update"} <= set(m_par[-1])


def test_rl_from_a_saved_sft_policy_equals_rl_right_after_sft(tokenizer, tmp_path) -> None:
    """`hiper sft` then `hiper train model.path=<its policy> sft.enabled=false` reproduces SFT and RL in one run bit
    for bit (the demo's tuning runs start from one saved SFT policy this way; docs/results_cpu_demo.md)."""
    from hiper.trainer.cli_sft import run_sft

    sft_on = {"enabled": True, "episodes": 4, "epochs": 1, "lr": 1e-3, "batch_size": 8}
    whole = Trainer(tiny_config("hae", sft=sft_on) | {"output_dir": str(tmp_path / "whole")},
                    tokenizer=tokenizer)
    whole.sft()
    metrics_whole = [whole.iteration() for _ in range(2)]
    saved = run_sft(as_config(tiny_config("hae", sft=sft_on) | {"output_dir": str(tmp_path / "sft")}), None)
    split = Trainer(tiny_config("hae", model={"path": str(saved / "policy"), "tiny": None, "tokenizer": None})
                    | {"output_dir": str(tmp_path / "split")})
    metrics_split = [split.iteration() for _ in range(2)]
    a, b = _params(whole), _params(split)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for key in ("actor/pg_loss", "critic/loss", "train/success"):
        assert [m[key] for m in metrics_whole] == [m[key] for m in metrics_split], key


def test_a_huge_learning_rate_stops_the_run_with_the_cause(tokenizer, tmp_path) -> None:
    """actor.lr=1e9: the weights blow up and the next iteration's log-probs are not finite; the run stops with a
    one-line message naming the learning rate instead of training on (or failing deep inside the estimator)."""
    from hiper.losses import UpdatesDiverged

    cfg = tiny_config("hae", actor={"lr": 1e9}, trainer={"total_iterations": 8, "eval_every": 0,
                                                         "num_threads": 1, "max_bad_updates": 2})
    cfg["output_dir"] = str(tmp_path / "run")
    trainer = Trainer(cfg, tokenizer=tokenizer)
    with pytest.raises(UpdatesDiverged, match=r"actor.lr=1e\+09.*lower the learning rate"):
        trainer.train()
    assert trainer.iteration_count < 8
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())  # never non-finite weights
    with torch.no_grad():
        next(trainer.policy.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="policy has non-finite weights"):
        trainer.save_checkpoint()
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_a_nan_reward_quarantines_its_trajectory(tokenizer, monkeypatch) -> None:
    from hiper.envs.household import HouseholdEnv

    real_step = HouseholdEnv.step
    calls = {"n": 0}

    def nan_once(self, action):
        obs, reward, done, info = real_step(self, action)
        calls["n"] += 1
        return obs, (float("nan") if calls["n"] == 2 else reward), done, info

    monkeypatch.setattr(HouseholdEnv, "step", nan_once)
    trainer = Trainer(tiny_config("hae"), tokenizer=tokenizer)
    metrics = trainer.iteration()
    assert metrics["train/quarantined"] == 1.0
    assert trainer.last.batch.n_traj == 3 and torch.isfinite(trainer.last.batch.rewards).all()


def test_env_faults_stay_out_of_the_loss_and_stop_a_broken_env(tokenizer, monkeypatch) -> None:
    """An exception in an env's step ends that episode as an env fault: the faulted turn is not trained on and is
    counted apart from step limits; an env failing on every episode stops the run instead of training on garbage."""
    from hiper.envs.household import HouseholdEnv
    from hiper.losses import UpdatesDiverged

    real_step = HouseholdEnv.step
    calls = {"n": 0}

    def flaky(self, action):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk on fire")
        return real_step(self, action)

    monkeypatch.setattr(HouseholdEnv, "step", flaky)
    trainer = Trainer(tiny_config("hae"), tokenizer=tokenizer)
    metrics = trainer.iteration()
    assert metrics["train/env_faults"] == 1.0
    trajs = trainer.last.trajectories
    assert sum(t.length for t in trajs) == len(trainer.last.batch)  # the faulted turn is not in the batch
    assert not any((t.turns[-1].truncation_reason or "").startswith("env error") and t.turns[-1].reward
                   for t in trajs)

    monkeypatch.setattr(HouseholdEnv, "step", lambda self, action: (_ for _ in ()).throw(OSError("broken")))
    broken = Trainer(tiny_config("hae", env={"max_consecutive_faults": 6}), tokenizer=tokenizer)
    with pytest.raises(UpdatesDiverged, match="cut by an env fault at its first turn.*env error: OSError: broken"):
        for _ in range(3):
            broken.iteration()


def test_consecutive_env_faults_stop_the_run(tokenizer, monkeypatch) -> None:
    from hiper.envs.household import HouseholdEnv
    from hiper.losses import UpdatesDiverged

    real_step = HouseholdEnv.step

    def second_step_fails(self, action):
        if self._step == 1:
            raise OSError("worker disk full")
        return real_step(self, action)

    monkeypatch.setattr(HouseholdEnv, "step", second_step_fails)
    trainer = Trainer(tiny_config("hae", env={"max_consecutive_faults": 6}), tokenizer=tokenizer)
    metrics = trainer.iteration()  # 4 faulted episodes, each keeps its first turn: trained on, counted
    assert metrics["train/env_faults"] == 4.0 and len(trainer.last.batch) == 4
    with pytest.raises(UpdatesDiverged, match="6 episodes in a row were cut by env faults"):
        trainer.iteration()


def test_over_long_prompts_drop_history_instead_of_stopping_the_run(tokenizer) -> None:
    """rollout.max_prompt_length below the longest prompt: the run goes on with shortened histories, counted."""
    trainer = Trainer(tiny_config("hae", env={"max_steps": 4, "prompt": "default"}), tokenizer=tokenizer)
    trainer.iteration()
    lengths = [(t.turn, len(t.extras["prompt_ids"])) for tr in trainer.last.trajectories for t in tr.turns]
    first = max(n for turn, n in lengths if turn == 0)
    assert max(n for _, n in lengths) > first  # histories make later prompts longer
    cfg = tiny_config("hae", env={"max_steps": 4, "prompt": "default"}, rollout={"temperature": 1.0, "max_new_tokens": 12,
                                                          "eval_temperature": 0.0, "max_prompt_length": first})
    short = Trainer(cfg, tokenizer=tokenizer)
    metrics = short.iteration()
    assert metrics["train/history_shortened_turns"] > 0
    turns = [t for tr in short.last.trajectories for t in tr.turns]
    assert all(len(t.extras["prompt_ids"]) <= first for t in turns)
    assert any(t.history_dropped for t in turns)


@pytest.mark.parametrize("estimator", ["hae", "token_gae"])
def test_packed_layout_equals_prompt_response_layout(estimator: str, tokenizer) -> None:
    """The updates' packed micro-batches (prompt and response side by side, padding after) hold each row's attended
    tokens in order and give the log-probs and critic values of the [P | L] layout."""
    from hiper.batch import TurnBatch
    from hiper.models.policy import response_logprobs

    trainer = Trainer(tiny_config(estimator, env={"max_steps": 4, "n_envs": 6}), tokenizer=tokenizer)
    trajs, _ = algorithm.rollout(trainer.config, trainer.learner(), trainer.manager("train"),
                                 trainer.tasks_for_iteration(0), 1, 1.0, seed=5)
    batch = TurnBatch.from_trajectories(trajs, trainer.table, trainer.pad_id)
    for _, mb in batch.micro_batches(torch.arange(len(batch)), 5):
        ids, mask = mb.input_ids()
        p_ids, p_mask, start = mb.packed_inputs()
        assert p_ids.shape[1] <= ids.shape[1]
        for r in range(len(mb)):
            assert p_ids[r][p_mask[r].bool()].tolist() == ids[r][mask[r].bool()].tolist()
            assert int(start[r]) == int(mb.prompt_mask[r].sum())
        with torch.no_grad():
            a, _ = response_logprobs(trainer.policy, ids, mask, mb.prompt_width, mb.response_ids)
            b, _ = response_logprobs(trainer.policy, p_ids, p_mask, start, mb.response_ids)
            va = trainer.critic.read_values(ids, mask, mb.prompt_width, mb.v_low_pos)
            vb = trainer.critic.read_values(p_ids, p_mask, start, mb.v_low_pos, response_width=mb.response_width)
        m = mb.response_mask
        assert torch.allclose(a[m], b[m], atol=1e-5)
        for head, v in va.items():
            ok = m if v.dim() == 2 else torch.ones(len(mb), dtype=torch.bool)
            assert torch.allclose(v[ok], vb[head][ok], atol=1e-5), head
    if estimator == "token_gae":
        with pytest.raises(ValueError, match="needs response_width"):
            trainer.critic.read_values(p_ids, p_mask, start, mb.v_low_pos)

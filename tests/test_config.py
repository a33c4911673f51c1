"""Trainer config: presets, overrides, round trips and the one-line validation errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hiper.config import (
    ConfigError,
    HiperConfig,
    apply_overrides,
    critic_heads,
    from_dict,
    list_presets,
    load_config,
    looks_local,
    parse_override,
    parse_yaml,
    save_resolved,
)

GPU_PRESETS = ["alfworld_qwen2.5_1.5b", "alfworld_qwen2.5_7b", "webshop_qwen2.5_1.5b", "webshop_qwen2.5_7b"]
# the GPU presets ask for trainer.device=cuda, which validation rejects on a CPU-only machine
CPU = [] if torch.cuda.is_available() else ["trainer.device=cpu"]


def test_presets_listed():
    assert set(list_presets()) == {"cpu_demo", *GPU_PRESETS}


def test_default_is_cpu_demo_and_round_trips():
    cfg = load_config(None, [])
    assert cfg == load_config("cpu_demo", [])
    # the resolved dict is a complete config: loading it back gives the same run
    assert from_dict(cfg.to_dict()) == cfg
    # keys a preset leaves out take the schema's defaults
    assert from_dict({}) == HiperConfig()
    assert cfg.env.name == "household" and cfg.model.tiny is not None and cfg.model.tokenizer == "builtin"
    assert cfg.algorithm.adv_estimator == "hae" and critic_heads(cfg) == ("low", "high", "term")


@pytest.mark.parametrize("name", GPU_PRESETS)
def test_gpu_presets_follow_spec_mode_a(name):
    cfg = load_config(name, CPU)
    alg, hae = cfg.algorithm, cfg.algorithm.hae
    # spec §4.1 / §7.1 shared values
    assert (alg.adv_estimator, alg.gamma, alg.lam, hae.lam_seg) == ("hae", 1.0, 1.0, 0.95)
    assert (hae.switch_mode, hae.norm_adv, hae.keep_penalty_mode) == ("code", True, "normalized")
    assert (cfg.critic.enabled, cfg.critic.mode, critic_heads(cfg), cfg.critic.cliprange_value) == (
        True, "separate", ("low", "high", "term"), 0.5)
    assert (cfg.actor.lr, cfg.critic.lr, cfg.actor.kl_coef, cfg.actor.entropy_coeff) == (1e-6, 1e-5, 0.01, 0.001)
    assert (cfg.actor.clip_ratio_low, cfg.actor.clip_ratio_high, cfg.actor.clip_ratio_c) == (0.2, 0.2, 3.0)
    assert (cfg.env.n_envs, cfg.env.group_size, cfg.env.eval_episodes) == (128, 1, 128)
    assert (cfg.trainer.total_iterations, cfg.trainer.eval_every) == (150, 5)
    assert (cfg.rollout.temperature, cfg.rollout.eval_temperature, cfg.rollout.max_new_tokens) == (1.0, 0.4, 512)
    assert cfg.actor.invalid_action_penalty_coef == 0.1 and cfg.model.tiny is None
    size = "7B" if name.endswith("7b") else "1.5B"
    assert cfg.model.path == f"Qwen/Qwen2.5-{size}-Instruct"
    if name.startswith("alfworld"):
        assert (cfg.env.name, cfg.env.max_steps, hae.keep_penalty, hae.keep_consistency_penalty) == (
            "alfworld", 50, -0.3, -0.3)
        assert hae.bootstrap_truncated is True
        assert cfg.critic.path == "Qwen/Qwen2.5-1.5B-Instruct"
    else:
        assert (cfg.env.name, cfg.env.max_steps, hae.keep_penalty, hae.keep_consistency_penalty) == (
            "webshop", 15, -3.5, -0.1)
        assert hae.bootstrap_truncated is False
        assert cfg.critic.path == cfg.model.path


def test_overrides_are_yaml_values():
    cfg = load_config(None, [
        "algorithm.hae.keep_penalty=-0.5",
        "actor.lr=1e-6",                      # YAML 1.1 would make this a string
        "trainer.logger=[console, jsonl]",
        "critic.cliprange_value=null",
        "sft.enabled=false",
        "env.kwargs.difficulty=small",        # free-form dict keys
        "model.tiny.hidden_size=64",
        "trainer.experiment_name=7",          # a number given to a string key
    ])
    assert cfg.algorithm.hae.keep_penalty == -0.5
    assert cfg.actor.lr == 1e-6 and isinstance(cfg.actor.lr, float)
    assert cfg.trainer.logger == ["console", "jsonl"]
    assert cfg.critic.cliprange_value is None and cfg.sft.enabled is False
    assert cfg.env.kwargs == {"difficulty": "small", "step_limit": "truncated", "inadmissible_penalty": 0.5}  # one key set, the rest kept
    assert cfg.model.tiny["hidden_size"] == 64 and cfg.model.tiny["num_hidden_layers"] == 3
    assert cfg.trainer.experiment_name == "7"


def test_yaml_floats_and_override_parsing():
    assert parse_yaml("a: 1e-6\nb: 3\nc: .5\nd: 1.0e+3\ne: '1e-6'") == {"a": 1e-6, "b": 3, "c": 0.5, "d": 1000.0,
                                                                        "e": "1e-6"}
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("x=") == (["x"], None)
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2", "d.e=3"]) == {"a": {"b": 1, "c": 2}, "d": {"e": 3}}


def test_resolved_round_trip(tmp_path):
    cfg = load_config("webshop_qwen2.5_1.5b", [*CPU, "algorithm.hae.keep_penalty=-1.25", "env.kwargs.x=[1, 2]"])
    path = save_resolved(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(str(path), []) == cfg
    assert from_dict(cfg.to_dict()) == cfg


def test_user_file_with_base(tmp_path):
    user = tmp_path / "my.yaml"
    user.write_text("base: cpu_demo\nenv:\n  max_steps: 7\nalgorithm:\n  hae:\n    keep_penalty: -0.1\n")
    cfg = load_config(str(user), ["env.n_envs=4"])
    assert (cfg.env.max_steps, cfg.env.n_envs, cfg.algorithm.hae.keep_penalty) == (7, 4, -0.1)
    assert cfg.env.history_length == 4  # from the base (the preset's, not the schema's 2)


def test_hub_ids_versus_local_paths(tmp_path):
    assert not looks_local("Qwen/Qwen2.5-1.5B-Instruct")
    assert looks_local("models/smollm2-135m-instruct") and looks_local("./x") and looks_local("a/b/c")
    assert looks_local("/abs/dir") and looks_local("x.gguf")
    folder = tmp_path / "policy"
    folder.mkdir()
    cfg = load_config(None, ["model.tiny=null", "model.tokenizer=null", f"model.path={folder}"])
    assert cfg.model.path == str(folder)


# (overrides, fragments the one-line message must contain)
ERRORS = [
    (["actor.lrr=1"], ["unknown config key 'actor.lrr'", "did you mean 'actor.lr'"]),
    (["algoritm.gamma=1"], ["unknown config key 'algoritm'", "did you mean 'algorithm'"]),
    (["actor.lr=abc"], ["'actor.lr' must be a number", "'abc'", "e.g. actor.lr="]),
    (["env.max_steps=2.5"], ["'env.max_steps' must be an integer"]),
    (["sft.enabled=maybe"], ["'sft.enabled' must be true/false"]),
    (["env=3"], ["'env' is a section"]),
    (["actor.lr"], ["not of the form dotted.key=value"]),
    (["critic.enabled=false"], ["set critic.enabled=true or choose algorithm.adv_estimator=gigpo|grpo|rloo"]),
    (["algorithm.adv_estimator=gae", "critic.enabled=false"], ["adv_estimator=gae needs a critic"]),
    (["algorithm.adv_estimator=grpo"], ["env.group_size=8", "grpo"]),
    (["algorithm.adv_estimator=gigpo", "env.group_size=1"], ["env.group_size=8"]),
    (["critic.n_heads=3"], ["'critic.n_heads' was removed", "follow from algorithm.adv_estimator"]),
    (["algorithm.hae.invalid_penalty=0.1"], ["is set by 'actor.invalid_action_penalty_coef'"]),
    (["algorithm.hae.gamma=0.9"], ["is set by 'algorithm.gamma'"]),
    (["actor.policy_loss=ppo2"], ["actor.policy_loss='ppo2' is not allowed", "clip, dual_clip"]),
    (["algorithm.gamma=1.5"], ["algorithm.gamma=1.5 must be in [0, 1]"]),
    (["algorithm.lam=-0.1"], ["algorithm.lam=-0.1 must be in [0, 1]"]),
    (["algorithm.hae.lam_seg=2"], ["algorithm.hae.lam_seg must be in [0, 1], got 2.0"]),
    (["actor.clip_ratio_low=0"], ["actor.clip_ratio_low=0.0 must be > 0"]),
    (["actor.clip_ratio_c=1"], ["clip_ratio_c=1.0 must be > 1"]),
    (["actor.lr=0"], ["actor.lr=0.0 must be > 0"]),
    (["critic.lr=-1e-5"], ["critic.lr=-1e-05 must be > 0"]),
    (["critic.cliprange_value=0"], ["critic.cliprange_value=0.0 must be > 0"]),
    (["algorithm.hae.keep_penalty=0.3"], ["algorithm.hae.keep_penalty", "must be <= 0", "got 0.3"]),
    (["algorithm.hae.keep_penalty_mode=last"], ["algorithm.hae.keep_penalty_mode must be one of", "last_step"]),
    (["algorithm.adv_estimator=ppo"], ["adv_estimator='ppo' is not allowed", "gae, gigpo, grpo, hae, rloo"]),
    (["env.name=alfwrld"], ["env.name='alfwrld' is not allowed", "did you mean 'alfworld'"]),
    (["model.dtype=fp8"], ["model.dtype='fp8' is not allowed"]),
    (["rollout.top_p=0"], ["rollout.top_p=0.0 must be in (0, 1]"]),
    (["actor.micro_batch_size=256"], ["micro_batch_size=256 must be <= actor.mini_batch_size=128"]),
    (["sft.prompt_loss_weight=-1"], ["sft.prompt_loss_weight=-1.0 must be >= 0"]),
    (["sft.nll_examples=-1"], ["sft.nll_examples=-1 must be >= 0"]),
    (["critic.micro_batch_size=0"], ["critic.micro_batch_size=0 must be >= 1"]),
    (["model.path=Qwen/Qwen2.5-1.5B-Instruct"], ["not both", "model.tiny=null"]),
    (["model.tiny=null"], ["model.path is null and model.tiny is null"]),
    (["model.tiny=null", "model.path=/no/such/dir"], ["model.path='/no/such/dir' does not exist"]),
    (["model.tiny=null", "model.tokenizer=null", "model.path=models/smollm2-missing"], ["make smollm2"]),
    (["model.tiny=null", "model.path=Qwen/Qwen2.5-1.5B-Instruct"], ["model.tokenizer=builtin only goes with"]),
    (["critic.mode=shared", "critic.path=Qwen/Qwen2.5-1.5B-Instruct"], ["critic.path only applies"]),
    (["trainer.logger=[console, tb]"], ["trainer.logger='tb' is not allowed"]),
    (["trainer.resume=/no/such/ckpt"], ["trainer.resume='/no/such/ckpt' is not a checkpoint folder"]),
    (["trainer.device=gpu"], ["trainer.device='gpu' is not a device"]),
    (["env.n_envs=0"], ["env.n_envs=0 must be >= 1"]),
    (["sft.max_steps=0"], ["sft.max_steps=0 must be >= 1 or null"]),
    (["env.prompt=fancy"], ["env.prompt='fancy' is not allowed", "default, compact"]),
    (["critic.dtype=float16"], ["critic.dtype='float16' is not allowed"]),
    (["env.n_workers=-1"], ["env.n_workers=-1 must be >= 0"]),
    (["trainer.num_threads=0"], ["trainer.num_threads=0 must be >= 1 or null"]),
]


@pytest.mark.parametrize(("overrides", "fragments"), ERRORS, ids=[" ".join(o) for o, _ in ERRORS])
def test_validation_errors_are_one_line_and_name_the_fix(overrides, fragments):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_optional_packages_are_checked():
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match=r"pip install .hiper\[wandb\]."):
            load_config(None, ["trainer.logger=[wandb]"])
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match="rollout.engine=hf"):
            load_config(None, ["rollout.engine=vllm"])
    if importlib.util.find_spec("peft") is None:
        with pytest.raises(ConfigError, match="hiper\\[lora\\]"):
            load_config(None, ["model.lora.enabled=true"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="set trainer.device=cpu"):
            load_config(None, ["trainer.device=cuda"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset; did you mean 'cpu_demo'"):
        load_config("cpu_dem", [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad), [])
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(str(scalar), [])
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(loop), [])


def test_every_setting_is_declared_with_help_and_the_reference_is_in_sync() -> None:
    """Each key of the run config is one declared field (type, default, one-line help); docs/config_reference.md is
    generated from those declarations and must match them (regenerate: python -m hiper.config.reference)."""
    from pathlib import Path

    from hiper.config.reference import reference_markdown
    from hiper.settings import help_of

    pending = [HiperConfig()]
    n_fields = 0
    while pending:
        obj = pending.pop()
        for f in dataclasses.fields(obj):
            help_text, _ = help_of(f)
            assert help_text and "\n" not in help_text, f"{type(obj).__name__}.{f.name} has no one-line help"
            n_fields += 1
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                pending.append(value)
    assert n_fields > 100
    doc = Path(__file__).resolve().parents[1] / "docs" / "config_reference.md"
    assert doc.read_text() == reference_markdown(), "stale docs/config_reference.md: python -m hiper.config.reference"


def test_one_mapping_from_config_to_estimator() -> None:
    """A baseline gets KEEP shaping only from its own section; every estimator gets the actor's invalid penalty;
    hae and gae take algorithm.gamma / algorithm.lam, gigpo keeps its own discount."""
    from hiper.config import estimator_config

    cfg = load_config(None, ["algorithm.adv_estimator=grpo", "env.group_size=4", "critic.enabled=false"])
    assert cfg.algorithm.hae.keep_penalty == -0.3  # the preset's HAE shaping ...
    grpo = estimator_config(cfg)
    assert (grpo.keep_penalty, grpo.keep_consistency_penalty, grpo.keep_penalty_mode) == (0.0, 0.0, "fixed")  # ... stays HAE's
    assert grpo.invalid_penalty == cfg.actor.invalid_action_penalty_coef == 1.0
    cfg = load_config(None, ["algorithm.adv_estimator=grpo", "env.group_size=4", "algorithm.grpo.keep_penalty=-0.2"])
    assert estimator_config(cfg).keep_penalty == -0.2
    cfg = load_config(None, ["algorithm.gamma=0.8", "algorithm.lam=0.9"])
    hae, gae, gigpo = (estimator_config(cfg, n) for n in ("hae", "gae", "gigpo"))
    assert (hae.gamma, hae.lam, gae.gamma, gae.lam) == (0.8, 0.9, 0.8, 0.9)
    assert gigpo.gamma == 0.95

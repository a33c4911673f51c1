"""``hiper train`` / ``hiper sft`` glue: help, one-line config errors (exit 2), resolved config, resume."""

from __future__ import annotations

import pytest
import yaml

from hiper import cli
from hiper.config import load_config
from hiper.trainer import cli_sft, cli_train


def test_train_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--resume" in out and "key=value" in out and "alfworld_qwen2.5_1.5b" in out


def test_sft_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["sft", "--help"])
    assert info.value.code == 0
    assert "--resume" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "actor.lr=abc"], "config key 'actor.lr' must be a number"),
        (["train", "actor.lrr=1"], "did you mean 'actor.lr'"),
        (["train", "--config", "no_such_preset"], "neither a YAML file nor a preset"),
        (["train", "critic.enabled=false"], "set critic.enabled=true"),
        (["train", "--resume", "/no/such/ckpt"], "--resume /no/such/ckpt: no such run or checkpoint folder"),
        (["sft", "env.name=nowhere"], "env.name='nowhere' is not allowed"),
    ],
)
def test_bad_config_exits_2_with_one_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hiper {argv[0]}: error: ") and fragment in lines[0], lines
    assert not (tmp_path / "runs").exists()  # nothing written for a bad config


def test_print_config_is_the_resolved_yaml(capsys):
    assert cli.main(["train", "--print-config", "-c", "cpu_demo", "env.max_steps=9", "--output-dir", "runs/x y"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["env"]["max_steps"] == 9 and data["output_dir"] == "runs/x y"
    assert data["trainer"]["experiment_name"] == "x y"  # the run is named after its folder
    assert load_config(None, ["env.max_steps=9", "output_dir=runs/x y", "trainer.experiment_name=x y"]).to_dict() == data


def test_train_saves_config_and_calls_the_trainer(tmp_path, monkeypatch, capsys):
    calls = {}

    def fake_run(cfg, logger):
        calls.update(cfg=cfg, resume_from=cfg.trainer.resume)
        for step in range(3):
            logger.log({"train/success": step / 2}, step=step)

    monkeypatch.setattr(cli_train, "run_training", fake_run)
    out = tmp_path / "run"
    user = tmp_path / "user.yaml"  # a user file (not the bare demo preset): the generic trainer path
    user.write_text("base: cpu_demo\n")
    assert cli.main(["train", "-c", str(user), "-o", str(out), "trainer.logger=[jsonl]", "actor.lr=1e-5"]) == 0
    assert calls["cfg"].actor.lr == 1e-5 and calls["resume_from"] is None
    assert load_config(str(out / "config.yaml"), []) == calls["cfg"]  # the resolved config is saved with the run
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert (out / "learning_curve.png").is_file()
    assert "done" in capsys.readouterr().out


def test_train_without_config_is_the_demo(tmp_path, monkeypatch, capsys):
    """``hiper train`` with no arguments runs ``demo.run_demo`` on the cpu_demo preset (= DEMO_CONFIG): the
    before/after table, learning_curve.png and demo_result.json (shrunk here by overrides to stay fast)."""
    import json

    monkeypatch.chdir(tmp_path)
    small = ["env.n_envs=2", "env.eval_episodes=2", "env.max_steps=3", "sft.episodes=2", "sft.epochs=1",
             "trainer.total_iterations=1", "trainer.eval_every=1", "trainer.logger=[jsonl]",
             "trainer.num_threads=null"]  # leave torch's thread count of the test process alone
    assert cli.main(["train", *small]) == 0
    out = tmp_path / "runs" / "cpu_demo"
    text = capsys.readouterr().out
    assert "SFT only" in text and "SFT + HiPER RL" in text and "success (all)" in text
    assert "policy: tiny Qwen2 from a config, 0.7" in text and "trainable" not in text  # full fine-tune
    assert (out / "learning_curve.png").is_file() and (out / "config.yaml").is_file()
    result = json.loads((out / "demo_result.json").read_text())
    assert 0.0 <= result["before"]["eval/success"] <= 1.0 and 0.0 <= result["after"]["eval/success"] <= 1.0
    assert result["train_temperature"] == load_config(None, []).rollout.temperature == 0.4  # the preset's
    assert result["machine"]["cpu"] and result["machine"]["packages"]["torch"]  # where the figures were measured
    assert "measured on " in text
    assert load_config(str(out / "config.yaml"), []) == load_config(None, small)
    # the best held-out checkpoint is kept beside the final one, and resuming still starts from the final one
    assert (out / "checkpoints" / "best" / "manifest.json").is_file()
    assert (out / "checkpoints" / "latest").read_text().strip() == "iter_000001"


TINY_RUN = ["env.n_envs=2", "env.eval_episodes=2", "env.max_steps=4", "sft.episodes=2", "sft.epochs=1",
            "trainer.total_iterations=2", "trainer.eval_every=0", "trainer.save_every=0", "trainer.logger=[jsonl]",
            "trainer.num_threads=null", "rollout.max_new_tokens=12"]


def test_run_folder_lifecycle(tmp_path, monkeypatch, capsys):
    """README's sequence on a tiny run: train, evaluate the run folder, resume it (its own config, folder and
    metrics), refuse a fresh run into it, start over with --overwrite."""
    import json

    monkeypatch.chdir(tmp_path)
    user = tmp_path / "tiny.yaml"
    user.write_text("base: cpu_demo\n")
    run = tmp_path / "runs" / "mine"
    assert cli.main(["train", "-c", str(user), "-o", str(run), *TINY_RUN]) == 0
    assert (run / "checkpoints" / "latest").is_file()  # save_every: 0 still leaves the final checkpoint
    saved = load_config(str(run / "config.yaml"), [])
    assert saved.trainer.experiment_name == "mine" and saved.env.max_steps == 4
    assert cli.main(["eval", "--policy", str(run), "--n", "2", "--no-progress"]) == 0

    # a resume after a crash between logging and saving: rows past the checkpoint are dropped, then recomputed
    metrics = run / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write(json.dumps({"step": 3, "train/success": 1.0}) + "\n")
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "trainer.total_iterations=3"]) == 0
    assert "resuming" in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    iteration_steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
                       if "time/iteration" in json.loads(line)]
    assert iteration_steps == [1, 2, 3] and steps == sorted(steps)
    resumed = load_config(str(run / "config.yaml"), [])
    assert resumed.env.max_steps == 4 and resumed.trainer.total_iterations == 3  # RUN's config + the override
    assert not (tmp_path / "runs" / "cpu_demo").exists()  # nothing written anywhere else

    assert cli.main(["train", "-c", str(user), "-o", str(run), *TINY_RUN]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(["train", "-c", str(user), "-o", str(run), "--overwrite", *TINY_RUN]) == 0
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines() if "time/iteration" in line] == [1, 2]


def test_sft_saves_config_and_runs(tmp_path, monkeypatch):
    seen = {}

    def fake_sft(cfg, logger):
        seen["cfg"] = cfg
        return tmp_path / "run" / "checkpoints" / "sft"

    monkeypatch.setattr(cli_sft, "run_sft", fake_sft)
    assert cli.main(["sft", "-o", str(tmp_path / "run"), "trainer.logger=[jsonl]", "sft.epochs=1"]) == 0
    assert seen["cfg"].sft.epochs == 1
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_demo_banner_counts_lora_trainable_parameters(tmp_path, monkeypatch, capsys):
    pytest.importorskip("peft")
    monkeypatch.chdir(tmp_path)
    small = ["env.n_envs=2", "env.eval_episodes=2", "env.max_steps=3", "sft.enabled=false",
             "trainer.total_iterations=1", "trainer.eval_every=1", "trainer.logger=[jsonl]",
             "trainer.num_threads=null", "model.lora.enabled=true"]
    assert cli.main(["train", *small]) == 0
    banner = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("policy:"))
    n_train = float(banner.split("(")[1].split("M trainable")[0])
    assert 0.0 < n_train < 0.76, banner  # adapters only

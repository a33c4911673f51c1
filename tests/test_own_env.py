"""Bring your own environment: the registration API, the LockBox example trained through ``hiper train``, and the
gymnasium-style adapter."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from hiper import cli
from hiper.envs import ENV_FAMILIES, check_info, make_batch, make_env, register_env, task_panel
from hiper.envs.adapters import register_gym_env
from hiper.protocol import FAMILIES, render_prompt
from hiper.rollout.loop import run_episodes
from hiper.rollout.manager import EnvManager
from hiper.rollout.policies import ExpertPolicy, RandomPolicy


def test_lockbox_registers_itself_and_its_expert_solves_it() -> None:
    import hiper.examples.lockbox  # noqa: F401 - registration on import

    assert ENV_FAMILIES["lockbox"] == "puzzle" and "puzzle" in FAMILIES
    tasks = task_panel("lockbox", "valid_seen", n=20)
    manager = EnvManager(make_batch("lockbox"), family="puzzle")
    trajs = run_episodes(manager, ExpertPolicy(manager), tasks)
    assert all(t.won for t in trajs)
    subgoals = {turn.subgoal for t in trajs for turn in t.turns}
    assert {"find the key", "take the key", "unlock the chest", "open the chest"} <= subgoals
    assert all(1 + sum(turn.switch for turn in t.turns[1:]) >= 3 for t in trajs)  # several segments per episode
    prompt = trajs[0].turns[0].prompt
    assert prompt.startswith("You solve a small text puzzle") and "'open drawer 1'" in prompt
    env = make_env("lockbox")
    _, info = env.reset(tasks[0])
    check_info(info)


def test_hiper_train_on_the_example_env(tmp_path, monkeypatch) -> None:
    """One SFT + RL iteration through the CLI with env.plugins naming the module (the path your own env takes)."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "lockbox_run"
    user = tmp_path / "lockbox.yaml"
    user.write_text("base: cpu_demo\n")
    argv = ["train", "-c", str(user), "-o", str(run), "env.name=lockbox", "env.plugins=[hiper.examples.lockbox]",
            "env.kwargs={}", "env.n_envs=4", "env.max_steps=8", "env.eval_episodes=4", "sft.episodes=8",
            "sft.epochs=1", "trainer.total_iterations=1", "trainer.eval_every=1", "trainer.logger=[jsonl]",
            "trainer.num_threads=null", "rollout.max_new_tokens=16"]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    it = next(r for r in rows if "time/iteration" in r)
    assert it["train/n_episodes"] == 4 and it["actor/steps"] >= 1
    assert any("eval/success" in r for r in rows)
    assert (run / "checkpoints" / "latest").is_file()
    assert cli.main(["eval", "--policy", str(run), "--n", "2", "--no-progress"]) == 0  # the run's env and plugins


def test_env_plugins_must_import() -> None:
    assert cli.main(["train", "--print-config", "env.plugins=[no_such_module_xyz]"]) == 2


def test_register_env_refuses_a_taken_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_env("household", dict, family="household")


class GuessNumber:
    """A gymnasium-style text env: guess a number in 1..4; string observations and actions."""

    def reset(self, seed: int | None = None, options: Any = None) -> tuple[str, dict]:
        self.secret = random.Random(seed).randint(1, 4)
        return "Guess a number between 1 and 4.", {"admissible": [f"guess {i}" for i in range(1, 5)]}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        right = action == f"guess {self.secret}"
        return ("Right!" if right else "Wrong."), float(right), right, False, {
            "admissible": [f"guess {i}" for i in range(1, 5)]}


def test_gymnasium_style_adapter() -> None:
    cls = register_gym_env("guess_number", make=GuessNumber, family="household", task="guess the secret number",
                           split_sizes={"train": 50, "valid_seen": 10}, replace=True)
    env = make_env("guess_number", max_steps=3)
    tasks = task_panel("guess_number", "valid_seen")
    assert len(tasks) == 10 and isinstance(env, cls)
    obs, info = env.reset(tasks[0])
    check_info(info)
    assert info["task"] == "guess the secret number" and info["admissible"][0] == "guess 1"
    assert env.reset(tasks[0])[0] == obs  # a task is a fixed episode
    manager = EnvManager(make_batch("guess_number", max_steps=3), family="household")
    trajs = run_episodes(manager, RandomPolicy(seed=0), tasks)
    assert all(t.length <= 3 for t in trajs)
    assert all(t.truncation_reason == "max_steps" for t in trajs if not t.won and t.length == 3)
    assert any(t.won for t in trajs) and all(t.score == float(t.won) for t in trajs)
    assert "guess the secret number" in render_prompt("household", task="guess the secret number", observation=obs,
                                                       admissible=info["admissible"], current_subgoal=None)


def test_hiper_eval_on_a_plugin_env(capsys) -> None:
    argv = ["eval", "--env", "lockbox", "--env-plugin", "hiper.examples.lockbox", "--policy", "expert", "--n", "6",
            "--no-progress"]
    assert cli.main(argv) == 0
    assert "lockbox" in capsys.readouterr().out

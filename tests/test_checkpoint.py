"""Checkpoints: exact round trip (parameters, optimizer, scheduler, RNG streams), atomicity, pruning."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from hiper.config import load_config
from hiper.trainer.checkpoint import (
    capture_rng_state,
    checkpoint_root,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_policy,
    policy_dir,
    restore_rng_state,
    save_checkpoint,
)


def tiny_policy(seed: int = 0) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      max_position_embeddings=64, pad_token_id=0, eos_token_id=1)
    return Qwen2ForCausalLM(cfg)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate("go to the kitchen take apple".split())}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def train_step(model: nn.Module, opt: torch.optim.Optimizer, sched=None) -> None:
    ids = torch.randint(0, 40, (2, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    if sched is not None:
        sched.step()


def draws(gens: dict) -> tuple:
    return (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=gens["t"])),
            float(gens["np"].random()), gens["py"].random())


def make_state():
    policy = tiny_policy()
    critic = nn.Linear(16, 3)
    opt = torch.optim.AdamW(list(policy.parameters()), lr=1e-3)
    copt = torch.optim.AdamW(critic.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train_step(policy, opt, sched)
    critic(torch.randn(2, 16)).sum().backward()
    copt.step()
    return policy, critic, opt, copt, sched


def test_round_trip_restores_parameters_optimizer_and_rng(tmp_path):
    policy, critic, opt, copt, sched = make_state()
    gens = {"t": torch.Generator().manual_seed(5), "np": np.random.default_rng(6), "py": random.Random(7)}
    draws(gens)  # move every stream away from its seed
    path = save_checkpoint(
        tmp_path, iteration=3, models={"policy": policy, "critic": critic},
        optimizers={"actor": opt, "critic": copt}, schedulers={"actor": sched},
        rng=capture_rng_state(gens), extra={"sampler": {"position": 3}}, tokenizer=tiny_tokenizer(),
        config=load_config(None, []),
    )
    # the live run goes on: one more step (its batch drawn from the global RNG), then draws from every stream
    train_step(policy, opt, sched)
    expected = {k: v.clone() for k, v in policy.state_dict().items()}
    after_save = draws(gens)

    policy2, critic2 = tiny_policy(seed=1), nn.Linear(16, 3)
    opt2 = torch.optim.AdamW(list(policy2.parameters()), lr=1e-3)
    copt2 = torch.optim.AdamW(critic2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    state = load_checkpoint(path, models={"policy": policy2, "critic": critic2}, optimizers={"actor": opt2,
                            "critic": copt2}, schedulers={"actor": sched2}, generators=gens, restore_rng=True)
    assert state["iteration"] == 3 and state["extra"] == {"sampler": {"position": 3}}
    assert state["config"]["env"]["name"] == "household"
    assert set(state["models"]) == {"policy", "critic"}
    assert policy2.lm_head.weight.data_ptr() == policy2.model.embed_tokens.weight.data_ptr()  # still tied
    assert torch.equal(critic2.weight, critic.weight)
    assert copt2.state_dict()["state"][0]["exp_avg"].equal(copt.state_dict()["state"][0]["exp_avg"])
    assert sched2.get_last_lr() == pytest.approx([5e-4])
    # the same step from the restored state reproduces the live run bit for bit, and so do the RNG draws
    train_step(policy2, opt2, sched2)
    for k, v in policy2.state_dict().items():
        assert torch.equal(v, expected[k]), k
    assert draws(gens) == after_save


def test_policy_folder_is_a_loadable_hf_folder(tmp_path):
    policy = tiny_policy()
    tok = tiny_tokenizer()
    save_checkpoint(tmp_path, iteration=1, models={"policy": policy}, tokenizer=tok)
    loaded, tok2 = load_policy(tmp_path)  # run folder -> latest checkpoint -> policy/
    text = "go to the kitchen take apple"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"] == [2, 3, 4, 5, 6, 7]
    assert tok2.padding_side == "left" and tok2.pad_token == "<pad>"
    ids = torch.tensor([tok2(text)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, policy(ids).logits)
    assert policy_dir(tmp_path / "checkpoints" / "iter_000001") == policy_dir(tmp_path)


class Exploding(nn.Module):
    """A model whose save fails half-way (after files were already written)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def state_dict(self, *args, **kwargs):
        raise RuntimeError("disk full")


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path):
    policy = tiny_policy()
    first = save_checkpoint(tmp_path, iteration=1, models={"policy": policy}, extra={"ok": 1})
    before = sorted(os.listdir(checkpoint_root(tmp_path)))
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, iteration=2, models={"policy": policy, "critic": Exploding()})
    with pytest.raises(Exception):  # noqa: B017 - an unpicklable extra fails inside torch.save
        save_checkpoint(tmp_path, iteration=2, models={"policy": policy}, extra={"bad": lambda: 0})
    assert sorted(os.listdir(checkpoint_root(tmp_path))) == before  # no iter_000002, no tmp leftovers
    assert latest_checkpoint(tmp_path) == first
    assert load_checkpoint(tmp_path)["extra"] == {"ok": 1}
    # overwriting the same name is atomic too: a failed rewrite keeps the old folder
    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path, iteration=1, models={"critic": Exploding()})
    assert load_checkpoint(first)["extra"] == {"ok": 1}


def test_stale_tmp_of_a_dead_process_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    root = checkpoint_root(tmp_path)
    (root / f"iter_000005.tmp-{pid}" / "policy").mkdir(parents=True)  # a crash mid-write left this
    assert latest_checkpoint(tmp_path) is None  # incomplete folders are never returned
    save_checkpoint(tmp_path, iteration=1, models={"critic": nn.Linear(2, 2)})
    assert sorted(os.listdir(root)) == ["iter_000001", "latest"]


def test_keep_last_k_and_named_checkpoints(tmp_path):
    critic = nn.Linear(2, 2)
    for it in range(1, 6):
        save_checkpoint(tmp_path, iteration=it, models={"critic": critic}, keep=2)
    best = save_checkpoint(tmp_path, iteration=2, models={"critic": critic}, name="best", update_latest=False, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_000004", "iter_000005"]
    assert latest_checkpoint(tmp_path).name == "iter_000005"
    assert best.is_dir() and load_checkpoint(best)["iteration"] == 2
    # a run folder resolves to its latest checkpoint
    assert load_checkpoint(tmp_path)["iteration"] == 5


def test_missing_pieces_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        load_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path, iteration=1, models={"critic": nn.Linear(2, 2)})
    with pytest.raises(FileNotFoundError, match="no 'policy'"):
        load_checkpoint(path, models={"policy": nn.Linear(2, 2)})
    with pytest.raises(KeyError, match="no optimizer 'actor'"):
        load_checkpoint(path, optimizers={"actor": torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)})
    with pytest.raises(KeyError, match="generator 'g'"):
        restore_rng_state(capture_rng_state(), {"g": torch.Generator()})
    with pytest.raises(TypeError, match="expected torch.Generator"):
        capture_rng_state({"bad": object()})


def test_manifest_detects_a_flipped_byte_and_the_cli_says_so_in_one_line(tmp_path, capsys) -> None:
    """Every checkpoint carries sha256s of its files; 64 flipped bytes in the critic's weights are caught on load
    (resume and eval), with a one-line error naming the file and exit status 2."""
    import json

    from hiper import cli
    from hiper.trainer.checkpoint import MANIFEST, CheckpointCorrupt, load_checkpoint, verify_checkpoint

    policy, critic = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
    path = save_checkpoint(tmp_path / "run", iteration=1, models={"policy": policy, "critic": critic})
    entries = json.loads((path / MANIFEST).read_text())["files"]
    assert {"trainer_state.pt", "critic/state_dict.pt", "policy/state_dict.pt"} <= set(entries)
    assert verify_checkpoint(path) == len(entries)
    weights = path / "critic" / "state_dict.pt"
    data = bytearray(weights.read_bytes())
    data[-100:-36] = bytes(b ^ 0xFF for b in data[-100:-36])
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorrupt, match="critic/state_dict.pt does not match its sha256"):
        load_checkpoint(path)
    assert load_checkpoint(path, verify=False)["iteration"] == 1  # the check can be skipped on purpose
    (tmp_path / "run" / "config.yaml").write_text("base: cpu_demo\n")
    assert cli.main(["train", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "critic/state_dict.pt does not match" in err[0] and "Traceback" not in err[0]

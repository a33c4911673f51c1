"""hiper.trainer.provenance: what a demo result records about the machine it ran on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch

from hiper.trainer import provenance


def test_machine_info_is_json_ready_and_names_what_decides_float_rounding(monkeypatch) -> None:
    for name in provenance.KERNEL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    info = provenance.machine_info()
    assert info["kernel_env"] == {"MKL_CBWR": "AVX2"}
    assert json.loads(json.dumps(info)) == info
    assert info["cpu"] == provenance.cpu_model() != ""
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch_threads"] == torch.get_num_threads()
    assert set(info["packages"]) == set(provenance.PACKAGES)
    assert info["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_is_the_checkout_head_or_none_outside_a_checkout(monkeypatch) -> None:
    commit = provenance.git_commit()
    if commit is not None:  # run from a git checkout (CI's clean clone is one)
        root = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=provenance.os.path.dirname(provenance.hiper.__file__)).stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit) and commit.startswith(root)

    def other_repository(*args, **kwargs):  # hiper installed into a venv inside some project's repository
        return subprocess.CompletedProcess(args, 0, stdout="/somewhere/else\n" + "a" * 40 + "\n", stderr="")

    monkeypatch.setattr(provenance.subprocess, "run", other_repository)
    assert provenance.git_commit() is None

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert provenance.git_commit() is None


def test_cpu_model_falls_back_when_proc_cpuinfo_is_unreadable(monkeypatch) -> None:
    def unreadable(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr("builtins.open", unreadable)
    monkeypatch.setattr(provenance.platform, "processor", lambda: "")
    assert provenance.cpu_model() == "unknown"
    monkeypatch.setattr(provenance.platform, "processor", lambda: "arm")
    assert provenance.cpu_model() == "arm"

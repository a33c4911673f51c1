"""Tokenizers: loading a model's tokenizer, and the code-built byte-level BPE of the CPU demo.

Nothing is downloaded: :func:`household_tokenizer` trains a BPE in ~2 s on expert episodes of the embedded household
world rendered through the protocol (:func:`household_corpus`), so the tiny demo policy can be built from a config.
:func:`build_tokenizer` picks one from the ``model`` config section.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from hiper.config.schema import HiperConfig
from hiper.envs import ENV_FAMILIES, make_batch, task_panel
from hiper.protocol.prompts import compact_renderer
from hiper.rollout.loop import run_episodes
from hiper.rollout.manager import EnvManager
from hiper.rollout.policies import ExpertPolicy

#: special tokens of the code-built demo tokenizer (chat roles, end of turn, padding).
DEMO_SPECIAL_TOKENS = ("<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>")
#: a minimal chat template: one user message, then the assistant's turn closed by ``<|end|>``.
DEMO_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
#: pre-tokenizer pattern: the protocol tags as whole pieces (so BPE can learn one token per tag), then
#: GPT-2's split pattern (contractions, words, numbers, punctuation runs, whitespace).
_SPLIT_REGEX = (
    r"</?(?:switch|subgoal|action)>|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}<]+| ?<|\s+(?!\S)|\s+"
)
#: with ``entity_tokens``: a word followed by a number ("fridge 1", "apple 2") is one piece, so BPE can give
#: each object / receptacle instance its own token and copying one from the prompt is a one-token lookup.
_ENTITY_REGEX = r" ?\p{L}+ \p{N}+(?![\p{L}\p{N}])|"


def build_demo_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2, entity_tokens: bool = False
) -> Any:
    """Train a byte-level BPE tokenizer on ``texts`` in code (no downloads) and wrap it for transformers.

    The pre-tokenizer isolates the protocol tags (``<switch>`` ... ``</action>``) so each can become one
    token, then applies GPT-2 style byte-level splitting; the result is a ``PreTrainedTokenizerFast``
    with ``<|end|>`` as EOS, ``<|pad|>`` as padding and :data:`DEMO_CHAT_TEMPLATE`. Training is
    deterministic for a fixed corpus. ``entity_tokens=True`` keeps "word number" pairs together in
    pre-tokenization (see ``_ENTITY_REGEX``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_REGEX.replace("'s|", ("'s|" + _ENTITY_REGEX) if entity_tokens else "'s|", 1)),
                                 behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(DEMO_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>", unk_token=None, bos_token=None
    )
    fast.chat_template = DEMO_CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def load_tokenizer(path: str, gguf_file: str | None = None) -> Any:
    """Load a tokenizer from a hub id, a local folder, or a folder + ``gguf_file`` (left padding, pad set).

    A local folder with a ``tokenizer.json`` is loaded verbatim (``PreTrainedTokenizerFast``): transformers
    5's ``AutoTokenizer`` maps ``model_type="qwen2"`` folders to ``Qwen2Tokenizer``, which rebuilds the
    pre-tokenizer from vocab + merges and so re-tokenises a code-built tokenizer (a CPU-demo checkpoint's)
    differently; for the real Qwen2.5 tokenizer both give the same ids.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if not gguf_file and os.path.isfile(os.path.join(path, "tokenizer.json")):
        tok = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def split_gguf(path: str) -> tuple[str, str | None]:
    """``"dir/model.gguf"`` -> ``("dir", "model.gguf")``; any other path -> ``(path, None)``."""
    if path.endswith(".gguf"):
        return os.path.dirname(path) or ".", os.path.basename(path)
    return path, None


# ----------------------------------------------------------------------------------------------
# the CPU demo's tokenizer, trained on the household world
# ----------------------------------------------------------------------------------------------


def household_corpus(env_name: str = "household", env_kwargs: Mapping[str, Any] | None = None,
                     n_episodes: int = 200) -> list[str]:
    """Text for the tokenizer: expert episodes' prompts (compact and standard) and responses, + tags.

    Deterministic (fixed tasks of the train split); covers the world's vocabulary and the protocol. Any registered
    env with an expert works (``builtin`` tokenizers of your own env, docs/own_env.md).
    """
    kwargs = dict(env_kwargs or {})
    texts: list[str] = []
    # compact prompts for every episode, the standard prompt for a few (so its words are covered too)
    for renderer, n in ((compact_renderer, n_episodes), (None, max(1, n_episodes // 10))):
        manager = EnvManager(make_batch(env_name, **kwargs), history_length=2, renderer=renderer,
                             family=ENV_FAMILIES[env_name])
        tasks = task_panel(env_name, "train", n=n, seed=12345)
        for traj in run_episodes(manager, ExpertPolicy(manager), tasks):
            for turn in traj.turns:
                texts.append(turn.prompt)
                texts.append(turn.response)
        manager.close()
    texts += ["<switch>KEEP</switch>", "<switch>SWITCH</switch>", "<subgoal></subgoal>", "<action></action>"]
    return texts


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(env_name: str, kwargs_json: str, vocab_size: int) -> Any:
    return build_demo_tokenizer(household_corpus(env_name, json.loads(kwargs_json)), vocab_size=vocab_size,
                                entity_tokens=True)


def household_tokenizer(env_name: str = "household", env_kwargs: Mapping[str, Any] | None = None,
                        vocab_size: int = 2048) -> Any:
    """The code-built byte-level BPE tokenizer of the demo (trained in ~2 s, cached per process).

    Object / receptacle instances ("fridge 1") become single tokens (``entity_tokens=True``).
    """
    kwargs = dict(env_kwargs or {})
    return copy.deepcopy(_cached_tokenizer(env_name, json.dumps(kwargs, sort_keys=True), vocab_size))


def build_tokenizer(cfg: HiperConfig) -> Any:
    """The run's tokenizer: ``model.tokenizer=builtin`` -> :func:`household_tokenizer` on ``env``'s world; else the
    tokenizer at ``model.tokenizer`` (or ``model.path``), a folder, hub id or ``.gguf`` file."""
    if cfg.model.tokenizer == "builtin":
        return household_tokenizer(cfg.env.name, cfg.env.kwargs)
    path = cfg.model.tokenizer or cfg.model.path
    if not path:
        raise ValueError("set model.tokenizer (a path, or 'builtin' for the code-built household BPE) or model.path")
    folder, gguf = split_gguf(str(path))
    return load_tokenizer(folder, gguf_file=gguf)


__all__ = [
    "DEMO_CHAT_TEMPLATE",
    "DEMO_SPECIAL_TOKENS",
    "build_demo_tokenizer",
    "build_tokenizer",
    "household_corpus",
    "household_tokenizer",
    "load_tokenizer",
    "split_gguf",
]

"""The Plan-Execute protocol: the response grammar, exact token spans, and prompt rendering.

* :mod:`hiper.protocol.grammar`: the one parser (:func:`parse_response`), KEEP semantics (:func:`next_subgoal`),
  :func:`format_response` and the KEEP / SWITCH continuations of paper switch mode.
* :mod:`hiper.protocol.spans`: char spans -> token role masks and value read positions (:func:`token_spans`).
* :mod:`hiper.protocol.prompts`: renderers per family (:func:`render_prompt`, :func:`compact_renderer`) and
  :func:`chat_prompt`.

Grammar and prompt names are re-exported here; ``hiper.protocol.spans`` (numpy + torch) is imported on its own.
"""

from __future__ import annotations

from hiper.protocol.flat import PROTOCOLS, format_flat, parse_flat, parser_for
from hiper.protocol.grammar import (
    BLOCKS,
    INITIAL_SUBGOAL,
    KEEP_CONTINUATION,
    REASON_CODES,
    SWITCH_CONTINUATIONS,
    ParsedResponse,
    ParseStats,
    Switch,
    format_response,
    keep_continuation,
    next_subgoal,
    normalize_subgoal,
    parse_response,
    shown_subgoal,
)
from hiper.protocol.prompts import (
    FAMILIES,
    PROMPT_PROTOCOL,
    RENDERERS,
    PromptConfig,
    PromptFamily,
    chat_prompt,
    compact_flat_renderer,
    compact_renderer,
    prompt_families,
    quoted_actions,
    register_family,
    render_flat_prompt,
    render_prompt,
)

__all__ = [
    "BLOCKS",
    "INITIAL_SUBGOAL",
    "KEEP_CONTINUATION",
    "FAMILIES",
    "PROMPT_PROTOCOL",
    "PROTOCOLS",
    "REASON_CODES",
    "RENDERERS",
    "SWITCH_CONTINUATIONS",
    "ParseStats",
    "ParsedResponse",
    "PromptConfig",
    "PromptFamily",
    "Switch",
    "chat_prompt",
    "compact_flat_renderer",
    "compact_renderer",
    "format_flat",
    "format_response",
    "keep_continuation",
    "next_subgoal",
    "normalize_subgoal",
    "parse_flat",
    "parse_response",
    "parser_for",
    "prompt_families",
    "quoted_actions",
    "register_family",
    "render_flat_prompt",
    "render_prompt",
    "shown_subgoal",
]

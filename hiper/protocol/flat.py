"""The flat (ReAct-style) protocol of the paper's prompt ablation (spec §6.3): think, then act; no switch, no subgoal.

Every turn the policy answers with two blocks, in this order::

    <think>free reasoning</think>
    <action>one admissible action</action>

This is the answer format of verl-agent's ALFWorld / WebShop prompts, which the paper's flat baselines (PPO, GRPO,
GiGPO without the Plan-Execute prompt) used. :func:`parse_flat` returns the same :class:`ParsedResponse` as the
Plan-Execute parser, so the env manager, the span builder and the estimators need no second code path:

* every flat turn is its own segment (``decision=SWITCH``, ``switch=True``, ``subgoal=None``): there are no KEEP
  turns, so KEEP and consistency penalties never apply, and the subgoal in force stays "None";
* ``action_span`` covers the whole answer, ``<think>`` through ``</action>``: the flat baselines train every
  generated token of a turn, as verl-agent does (the Plan-Execute protocol trains only its blocks);
* ``valid`` requires exactly one closed think block followed by one closed, non-empty action block; a missing or
  unclosed block, a Plan-Execute block, or CJK text is an error; text outside the blocks is a warning (an error in
  strict mode). ``action`` is the lower-cased, stripped content of the first ``<action>`` block (running to the end
  when unclosed), ``""`` without one, as in :func:`hiper.protocol.parse_response`.

:data:`PROTOCOLS` maps a protocol name to its parser; :data:`hiper.protocol.prompts.PROMPT_PROTOCOL` says which
protocol each ``env.prompt`` renderer asks for.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from hiper.protocol.grammar import _CJK, _TAG, ParsedResponse, Switch, parse_response

_FLAT_TAG = re.compile(r"<(/?)(think|action)>", re.IGNORECASE | re.ASCII)


def parse_flat(text: str, strict: bool = False) -> ParsedResponse:
    """Parse one flat answer; never raises (see the module docstring for the rules)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    errors: list[str] = []
    warnings: list[str] = []
    matches = list(_FLAT_TAG.finditer(text))
    tags = [(m.start(), m.end(), m.group(1) == "/", m.group(2).lower()) for m in matches]
    if any(m.group(0) != m.group(0).lower() for m in matches):
        (errors if strict else warnings).append("tag_case")
    opens = {name: [t for t in tags if t[3] == name and not t[2]] for name in ("think", "action")}
    closes = {name: [t for t in tags if t[3] == name and t[2]] for name in ("think", "action")}
    action, action_span, block_start = "", None, None
    if not opens["action"]:
        errors.append("missing_action")
    else:
        a_open = opens["action"][0]
        a_close = next((t for t in closes["action"] if t[0] >= a_open[1]), None)
        end = a_close[0] if a_close else len(text)
        action = text[a_open[1]:end].strip().lower()
        if a_close is None:
            errors.append("unclosed_action")
        elif not action:
            errors.append("empty_action")
        if len(opens["action"]) > 1:
            errors.append("duplicate_action")
        if a_close is not None:
            block_start = a_open[0]
            action_span = (a_open[0], a_close[1])
    if not opens["think"]:
        errors.append("missing_think")
    else:
        t_open = opens["think"][0]
        t_close = next((t for t in closes["think"] if t[0] >= t_open[1]), None)
        if t_close is None:
            errors.append("unclosed_think")
        elif opens["action"] and t_close[1] > opens["action"][0][0]:
            errors.append("wrong_order")
        elif action_span is not None:
            block_start = t_open[0]
            action_span = (t_open[0], action_span[1])
        if len(opens["think"]) > 1:
            errors.append("duplicate_think")
    if any(m.group(2).lower() != "action" for m in _TAG.finditer(text)):  # a <switch> or <subgoal> tag
        errors.append("plan_execute_blocks")
    if _CJK.search(text):
        errors.append("cjk")
    if action_span is not None and block_start is not None:
        outside = text[:block_start] + text[action_span[1]:]
        if outside.strip():
            (errors if strict else warnings).append("text_outside_blocks")
    return ParsedResponse(
        text=text, decision=Switch.SWITCH, subgoal=None, action=action, valid=not errors, errors=tuple(errors),
        switch=True, switch_span=None, subgoal_span=None, action_span=action_span, warnings=tuple(warnings),
    )  # fmt: skip


def format_flat(think: str, action: str) -> str:
    """The canonical flat answer; ``parse_flat(format_flat(r, a), strict=True)`` is valid for plain ``r`` and
    non-empty ``a`` (``ValueError`` otherwise)."""
    think, action = think.strip(), action.strip()
    if not action:
        raise ValueError("action must be non-empty")
    for name, content in (("think", think), ("action", action)):
        if _FLAT_TAG.search(content) or _TAG.search(content):
            raise ValueError(f"{name} must not contain protocol tags: {content!r}")
        if _CJK.search(content):
            raise ValueError(f"{name} must not contain CJK text: {content!r}")
    return f"<think>{think}</think>\n<action>{action}</action>"


#: protocol name -> parser ``(text, strict) -> ParsedResponse``
PROTOCOLS: dict[str, Callable[[str, bool], ParsedResponse]] = {
    "plan_execute": parse_response,
    "flat": parse_flat,
}


def parser_for(protocol: str) -> Callable[[str, bool], ParsedResponse]:
    """The parser of ``protocol`` (``ValueError`` naming the known ones otherwise)."""
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}") from None


__all__ = ["PROTOCOLS", "format_flat", "parse_flat", "parser_for"]

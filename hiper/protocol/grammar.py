"""The Plan-Execute protocol: one response parser, KEEP semantics, and prompt rendering.

Every turn the policy answers with three blocks, in this order and with nothing else::

    <switch>KEEP|SWITCH</switch>
    <subgoal>a short sub-goal</subgoal>
    <action>one admissible action</action>

:func:`parse_response` is the *only* parser: the env manager uses its ``action`` and ``valid``,
the trainer uses its ``switch`` flag and char spans (through :mod:`hiper.protocol.spans`). Because both
sides read the same :class:`ParsedResponse`, they cannot disagree (the official code has two
parsers that do, spec section 7 #13). The decision table for malformed outputs is in
``docs/protocol.md``; the short version:

* ``valid`` is a format flag (admissibility is the env's business) and ``valid == (errors == ())``.
* Missing / unclosed / duplicated / out-of-order blocks, a switch value other than KEEP/SWITCH, an
  empty subgoal or action, and CJK text are errors in both modes. Tag case, a non-canonical switch
  spelling (``keep``, `` SWITCH ``) and non-whitespace text outside the blocks are *warnings* in the
  lenient mode (the default, used for rollouts) and errors in strict mode.
* ``switch`` (the flag q_t: a new segment starts at this turn) is ``decision is SWITCH and subgoal``, i.e.
  exactly when :func:`next_subgoal` replaces the subgoal in force. An INVALID switch never starts a
  segment and never changes the subgoal.
* ``action`` is the lower-cased, stripped text of the first ``<action>`` block (closed, or running
  to the next tag / the end if unclosed), and ``""`` when there is no ``<action>`` tag at all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "BLOCKS",
    "INITIAL_SUBGOAL",
    "ParseStats",
    "ParsedResponse",
    "Switch",
    "KEEP_CONTINUATION",
    "SWITCH_CONTINUATIONS",
    "format_response",
    "keep_continuation",
    "next_subgoal",
    "normalize_subgoal",
    "parse_response",
    "shown_subgoal",
]

#: the three blocks, in the required order.
BLOCKS = ("switch", "subgoal", "action")
#: the "current sub-goal" shown before the first decision of an episode.
INITIAL_SUBGOAL = "None"


class Switch(str, Enum):
    """The switch decision of one turn. ``INVALID``: the block is missing, unclosed or holds another value."""

    KEEP = "KEEP"
    SWITCH = "SWITCH"
    INVALID = "INVALID"

    def __str__(self) -> str:
        return self.value


#: every reason code :func:`parse_response` can emit (errors or, in lenient mode, warnings).
REASON_CODES = (
    "missing_switch",
    "missing_subgoal",
    "missing_action",
    "unclosed_switch",
    "unclosed_subgoal",
    "unclosed_action",
    "duplicate_switch",
    "duplicate_subgoal",
    "duplicate_action",
    "wrong_order",
    "bad_switch_value",
    "empty_subgoal",
    "empty_action",
    "cjk",
    "text_outside_blocks",
    "tag_case",
    "switch_case",
    # the flat (think, act) protocol of hiper.protocol.flat
    "missing_think",
    "unclosed_think",
    "duplicate_think",
    "plan_execute_blocks",
)


@dataclass(frozen=True)
class ParsedResponse:
    """The parse of one response. Spans are half-open ``(start, end)`` char offsets into ``text``, tags included.

    ``switch_span`` / ``subgoal_span`` / ``action_span`` are ``None`` unless the block is present and closed.
    ``subgoal`` is the stripped content of the first closed subgoal block (``None`` when there is none);
    ``action`` is the string to send to the env (see the module docstring).
    """

    text: str
    decision: Switch
    subgoal: str | None
    action: str
    valid: bool
    errors: tuple[str, ...]
    switch: bool
    switch_span: tuple[int, int] | None
    subgoal_span: tuple[int, int] | None
    action_span: tuple[int, int] | None
    warnings: tuple[str, ...] = ()

    @property
    def spans(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None, tuple[int, int] | None]:
        """``(switch_span, subgoal_span, action_span)``."""
        return (self.switch_span, self.subgoal_span, self.action_span)


# The canonical layout covers almost every response of a trained policy and is matched by a single regex
# (fast path). Contents without '<' cannot hide a tag, so the fast path needs no tag scan; anything else
# (padding in the switch block, '<' in a content, stray text...) goes through the general parser.
_FAST = re.compile(
    r"\s*(<switch>(KEEP|SWITCH)</switch>)\s*(<subgoal>([^<]*)</subgoal>)\s*(<action>([^<]*)</action>)\s*\Z"
)
# The fast path's full condition as one regex (non-blank subgoal and action): a match is a valid, canonical
# response whose parse is exactly the fast path's. ``hiper.protocol.spans`` uses it to read block spans without
# building ParsedResponse objects; the groups are those of ``_FAST``.
_FAST_NONBLANK = re.compile(
    r"\s*(<switch>(KEEP|SWITCH)</switch>)\s*(<subgoal>(\s*[^<\s][^<]*)</subgoal>)\s*"
    r"(<action>(\s*[^<\s][^<]*)</action>)\s*\Z"
)
# ASCII-only case folding: with plain IGNORECASE, Unicode folding makes "<ſwitch>" (U+017F) and "<Keep>"-style
# look-alikes count as tags
_TAG = re.compile(r"<(/?)(switch|subgoal|action)>", re.IGNORECASE | re.ASCII)
# Chinese/Japanese/Korean scripts and CJK punctuation (the official check is [\u4e00-\u9fff] only).
_CJK = re.compile("[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_new = object.__new__
_setattr = object.__setattr__
_LENIENT_ONLY = frozenset({"text_outside_blocks", "tag_case", "switch_case"})


def parse_response(text: str, strict: bool = False) -> ParsedResponse:
    """Parse one response; never raises (non-``str`` input is parsed as ``str(text)``).

    Args:
        text: the decoded response (special tokens skipped).
        strict: if True, text outside the blocks, upper-case tags and a non-canonical switch spelling are
            errors (``valid=False``); by default they are recorded in ``warnings`` only.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    m = _FAST.match(text)
    if m is not None:
        regs = m.regs  # all group spans in one call: (whole, switch block, value, subgoal block, ..., action)
        subgoal = text[regs[4][0] : regs[4][1]].strip()
        action = text[regs[6][0] : regs[6][1]].strip().lower()
        if subgoal and action and (text.isascii() or _CJK.search(text) is None):
            is_switch = regs[2][1] - regs[2][0] == 6  # "SWITCH" (the regex admits only KEEP or SWITCH)
            # hot path (thousands of responses per batch): fill the frozen dataclass without its __init__
            obj = _new(ParsedResponse)
            _setattr(
                obj,
                "__dict__",
                {
                    "text": text,
                    "decision": Switch.SWITCH if is_switch else Switch.KEEP,
                    "subgoal": subgoal,
                    "action": action,
                    "valid": True,
                    "errors": (),
                    "switch": is_switch,
                    "switch_span": regs[1],
                    "subgoal_span": regs[3],
                    "action_span": regs[5],
                    "warnings": (),
                },
            )
            return obj
    return _parse_slow(text, strict)


def _parse_slow(text: str, strict: bool) -> ParsedResponse:  # noqa: C901 - one decision table (docs/protocol.md)
    """General parser: scan every recognised tag once and pair each open tag with the next tag."""
    tags = [
        (m.start(), m.end(), m.group(1) == "/", m.group(2).lower(), m.group(0)) for m in _TAG.finditer(text)
    ]
    problems: list[str] = []
    # name -> (open_start, open_end, close_start, close_end) of the first closed block of that name
    blocks: dict[str, tuple[int, int, int, int]] = {}
    # name -> (content_start, content_end) of the first unclosed block (content runs to the next tag / the end)
    first_unclosed: dict[str, tuple[int, int]] = {}
    # char ranges of every block occurrence, closed or not: text there is never "outside the blocks"
    covered: list[tuple[int, int]] = []
    opens: Counter[str] = Counter()
    tag_case = False
    for i, (start, end, is_close, name, raw) in enumerate(tags):
        if raw != raw.lower():
            tag_case = True
        if is_close:
            continue
        opens[name] += 1
        nxt = tags[i + 1] if i + 1 < len(tags) else None
        if nxt is not None and nxt[2] and nxt[3] == name:
            covered.append((start, nxt[1]))
            if name not in blocks:
                blocks[name] = (start, end, nxt[0], nxt[1])
        else:
            content_end = nxt[0] if nxt is not None else len(text)
            covered.append((start, content_end))
            if name not in first_unclosed:
                first_unclosed[name] = (end, content_end)
    for name in BLOCKS:
        if name in blocks:
            if opens[name] > 1:
                problems.append(f"duplicate_{name}")
        elif opens[name]:
            problems.append(f"unclosed_{name}")
        else:
            problems.append(f"missing_{name}")
    present = [blocks[n][0] for n in BLOCKS if n in blocks]
    if present != sorted(present):
        problems.append("wrong_order")

    switch = Switch.INVALID
    if "switch" in blocks:
        b = blocks["switch"]
        raw_value = text[b[1] : b[2]]
        value = raw_value.strip().upper()  # an ASCII original is required: "ſwitch".upper() == "SWITCH"
        if value not in ("KEEP", "SWITCH") or not raw_value.isascii() or (strict and raw_value != value):
            problems.append("bad_switch_value")
        else:
            switch = Switch(value)
            if raw_value != value:
                problems.append("switch_case")

    subgoal: str | None = None
    if "subgoal" in blocks:
        b = blocks["subgoal"]
        subgoal = text[b[1] : b[2]].strip()
        if not subgoal:
            problems.append("empty_subgoal")

    if "action" in blocks:
        b = blocks["action"]
        action = text[b[1] : b[2]].strip().lower()
        if not action:
            problems.append("empty_action")
    elif "action" in first_unclosed:
        s, e = first_unclosed["action"]
        action = text[s:e].strip().lower()
    else:
        action = ""

    if _CJK.search(text) is not None:
        problems.append("cjk")
    if tag_case:
        problems.append("tag_case")
    covered.sort()
    pos = 0
    for s, e in covered:
        if s > pos and text[pos:s].strip():
            problems.append("text_outside_blocks")
            break
        pos = max(pos, e)
    else:
        if text[pos:].strip():
            problems.append("text_outside_blocks")

    warns: tuple[str, ...]
    if strict:
        errors, warns = tuple(problems), ()
    else:
        errors = tuple(p for p in problems if p not in _LENIENT_ONLY)
        warns = tuple(p for p in problems if p in _LENIENT_ONLY)
    span = {n: (b[0], b[3]) for n, b in blocks.items()}
    return ParsedResponse(
        text=text,
        decision=switch,
        subgoal=subgoal,
        action=action,
        valid=not errors,
        errors=errors,
        switch=switch is Switch.SWITCH and bool(subgoal),
        switch_span=span.get("switch"),
        subgoal_span=span.get("subgoal"),
        action_span=span.get("action"),
        warnings=warns,
    )


# ----------------------------------------------------------------------------------------------- KEEP semantics


def normalize_subgoal(subgoal: str | None) -> str:
    """Whitespace-normalised subgoal used for KEEP-consistency checks (runs of whitespace -> one space)."""
    return " ".join((subgoal or "").split())


def _is_unset(subgoal: str | None) -> bool:
    return subgoal is None or normalize_subgoal(subgoal) in ("", INITIAL_SUBGOAL)


def next_subgoal(current: str | None, parsed: ParsedResponse) -> tuple[str, bool]:
    """The subgoal in force after this turn, and whether a KEEP turn altered the subgoal text.

    * ``parsed.switch`` (SWITCH with a non-empty subgoal): the new subgoal; not inconsistent.
    * No subgoal in force yet (``current`` is None / "" / "None", i.e. the episode's first decision) and the
      response wrote a non-empty subgoal: that subgoal is adopted whatever the switch says (HAE treats the
      first turn as a boundary anyway); not inconsistent.
    * Otherwise the current subgoal carries over (KEEP, INVALID switch, or SWITCH without a subgoal).
      ``keep_inconsistent`` is True only for a KEEP whose non-empty subgoal differs from the current one
      after whitespace normalisation (case matters, as in the official token-id comparison).
    """
    if parsed.switch:
        return parsed.subgoal or "", False
    if _is_unset(current):
        if parsed.subgoal:
            return parsed.subgoal, False
        return INITIAL_SUBGOAL if current is None else current, False
    assert current is not None
    inconsistent = (
        parsed.decision is Switch.KEEP
        and bool(parsed.subgoal)
        and normalize_subgoal(parsed.subgoal) != normalize_subgoal(current)
    )
    return current, inconsistent


def format_response(switch: Switch | str, subgoal: str, action: str) -> str:
    """The canonical well-formed response; ``parse_response(format_response(k, g, a), strict=True)`` is valid.

    The parse gives back ``k``, ``g.strip()`` and ``a.strip().lower()``. Raises ``ValueError`` for inputs that
    cannot be written as a valid response (INVALID switch, empty subgoal/action, text containing ``<``
    followed by a protocol tag, or CJK text).
    """
    value = str(switch.value if isinstance(switch, Switch) else switch).strip().upper()
    if value not in ("KEEP", "SWITCH"):
        raise ValueError(f"switch must be KEEP or SWITCH, got {switch!r}")
    subgoal, action = subgoal.strip(), action.strip()
    for name, content in (("subgoal", subgoal), ("action", action)):
        if not content:
            raise ValueError(f"{name} must be non-empty")
        if _TAG.search(content):
            raise ValueError(f"{name} must not contain protocol tags: {content!r}")
        if _CJK.search(content):
            raise ValueError(f"{name} must not contain CJK text: {content!r}")
    return f"<switch>{value}</switch>\n<subgoal>{subgoal}</subgoal>\n<action>{action}</action>"


@dataclass
class ParseStats:
    """Counts parse outcomes during rollouts: every failure counted by reason code, nothing raised.

    ``update(parsed)`` for each response; ``as_dict()`` gives ``{prefix + "invalid_rate": ..., prefix +
    "<code>": count, ...}`` for logging. ``counts`` holds errors and warnings alike.
    """

    total: int = 0
    invalid: int = 0
    switches: int = 0
    keeps: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    def update(self, parsed: ParsedResponse | Iterable[ParsedResponse]) -> ParseStats:
        items = [parsed] if isinstance(parsed, ParsedResponse) else parsed
        for p in items:
            self.total += 1
            self.invalid += not p.valid
            self.switches += p.decision is Switch.SWITCH
            self.keeps += p.decision is Switch.KEEP
            self.counts.update(p.errors)
            self.counts.update(p.warnings)
        return self

    def merge(self, other: ParseStats) -> ParseStats:
        self.total += other.total
        self.invalid += other.invalid
        self.switches += other.switches
        self.keeps += other.keeps
        self.counts.update(other.counts)
        return self

    def as_dict(self, prefix: str = "parse/") -> dict[str, float]:
        n = max(self.total, 1)
        out: dict[str, float] = {
            f"{prefix}total": float(self.total),
            f"{prefix}invalid_rate": self.invalid / n,
            f"{prefix}switch_rate": self.switches / n,
            f"{prefix}keep_rate": self.keeps / n,
        }
        for code, count in sorted(self.counts.items()):
            out[f"{prefix}{code}"] = float(count)
        return out


# ----------------------------------------------------------------------------------------------- continuations
#: the text the policy would write to KEEP: the canonical response (:func:`format_response`) up to and including
#: the newline after ``</subgoal>``; ``{subgoal}`` is the subgoal in force (o_{t-1}). Paper switch mode reads the
#: critic's V^low(s_t, o_{t-1}) on it.
KEEP_CONTINUATION = "<switch>KEEP</switch>\n<subgoal>{subgoal}</subgoal>\n"
#: the two teacher-forced switch decisions whose probabilities give beta (paper switch mode): the canonical
#: response's first block up to its value, tokenized on their own.
SWITCH_CONTINUATIONS = ("<switch>SWITCH", "<switch>KEEP")


def shown_subgoal(current_subgoal: str | None) -> str:
    """The subgoal text a prompt shows for ``current_subgoal`` (``None``/blank -> ``"None"``), stripped."""
    return current_subgoal.strip() if current_subgoal is not None and current_subgoal.strip() else INITIAL_SUBGOAL


def keep_continuation(subgoal: str | None) -> str:
    """The KEEP continuation text for the subgoal in force ``subgoal`` (``None``/blank -> ``"None"``, as prompts show).

    ``format_response("KEEP", g, a)`` starts with ``keep_continuation(g)`` for every valid ``g``.
    """
    return KEEP_CONTINUATION.format(subgoal=shown_subgoal(subgoal))

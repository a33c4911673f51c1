"""The Plan-Execute protocol: one response parser, KEEP semantics, and prompt rendering.

Every turn the policy answers with three blocks, in this order and with nothing else::

    <switch>KEEP|SWITCH</switch>
    <subgoal>a short sub-goal</subgoal>
    <action>one admissible action</action>

:func:`parse_response` is the *only* parser: the env manager uses its ``action`` and ``valid``,
the trainer uses its ``is_boundary`` and char spans (through :mod:`hiper.spans`). Because both
sides read the same :class:`ParsedResponse`, they cannot disagree (the official code has two
parsers that do, spec section 7 #13). The decision table for malformed outputs is in
``docs/protocol.md``; the short version:

* ``valid`` is a format flag (admissibility is the env's business) and ``valid == (errors == ())``.
* Missing / unclosed / duplicated / out-of-order blocks, a switch value other than KEEP/SWITCH, an
  empty subgoal or action, and CJK text are errors in both modes. Tag case, a non-canonical switch
  spelling (``keep``, `` SWITCH ``) and non-whitespace text outside the blocks are *warnings* in the
  lenient mode (the default, used for rollouts) and errors in strict mode.
* ``is_boundary`` (a new segment starts at this turn) is ``switch is SWITCH and subgoal``, i.e.
  exactly when :func:`next_subgoal` replaces the subgoal in force. An INVALID switch never starts a
  segment and never changes the subgoal.
* ``action`` is the lower-cased, stripped text of the first ``<action>`` block (closed, or running
  to the next tag / the end if unclosed), and ``""`` when there is no ``<action>`` tag at all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "BLOCKS",
    "INITIAL_SUBGOAL",
    "PROMPT_FAMILIES",
    "ParseStats",
    "ParsedResponse",
    "PromptConfig",
    "Switch",
    "chat_prompt",
    "format_response",
    "next_subgoal",
    "normalize_subgoal",
    "parse_response",
    "render_prompt",
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
)


@dataclass(frozen=True)
class ParsedResponse:
    """The parse of one response. Spans are half-open ``(start, end)`` char offsets into ``text``, tags included.

    ``switch_span`` / ``subgoal_span`` / ``action_span`` are ``None`` unless the block is present and closed.
    ``subgoal`` is the stripped content of the first closed subgoal block (``None`` when there is none);
    ``action`` is the string to send to the env (see the module docstring).
    """

    text: str
    switch: Switch
    subgoal: str | None
    action: str
    valid: bool
    errors: tuple[str, ...]
    is_boundary: bool
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
# response whose parse is exactly the fast path's. ``hiper.spans`` uses it to read block spans without
# building ParsedResponse objects; the groups are those of ``_FAST``.
_FAST_NONBLANK = re.compile(
    r"\s*(<switch>(KEEP|SWITCH)</switch>)\s*(<subgoal>(\s*[^<\s][^<]*)</subgoal>)\s*"
    r"(<action>(\s*[^<\s][^<]*)</action>)\s*\Z"
)
_TAG = re.compile(r"<(/?)(switch|subgoal|action)>", re.IGNORECASE)
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
                    "switch": Switch.SWITCH if is_switch else Switch.KEEP,
                    "subgoal": subgoal,
                    "action": action,
                    "valid": True,
                    "errors": (),
                    "is_boundary": is_switch,
                    "switch_span": regs[1],
                    "subgoal_span": regs[3],
                    "action_span": regs[5],
                    "warnings": (),
                },
            )
            return obj
    return _parse_slow(text, strict)


def _parse_slow(text: str, strict: bool) -> ParsedResponse:
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
        value = raw_value.strip().upper()
        if value not in ("KEEP", "SWITCH") or (strict and raw_value != value):
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

    if strict:
        errors, warns = tuple(problems), ()
    else:
        errors = tuple(p for p in problems if p not in _LENIENT_ONLY)
        warns = tuple(p for p in problems if p in _LENIENT_ONLY)
    span = {n: (b[0], b[3]) for n, b in blocks.items()}
    return ParsedResponse(
        text=text,
        switch=switch,
        subgoal=subgoal,
        action=action,
        valid=not errors,
        errors=errors,
        is_boundary=switch is Switch.SWITCH and bool(subgoal),
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

    * ``parsed.is_boundary`` (SWITCH with a non-empty subgoal): the new subgoal; not inconsistent.
    * No subgoal in force yet (``current`` is None / "" / "None", i.e. the episode's first decision) and the
      response wrote a non-empty subgoal: that subgoal is adopted whatever the switch says (HAE treats the
      first turn as a boundary anyway); not inconsistent.
    * Otherwise the current subgoal carries over (KEEP, INVALID switch, or SWITCH without a subgoal).
      ``keep_inconsistent`` is True only for a KEEP whose non-empty subgoal differs from the current one
      after whitespace normalisation (case matters, as in the official token-id comparison).
    """
    if parsed.is_boundary:
        return parsed.subgoal or "", False
    if _is_unset(current):
        if parsed.subgoal:
            return parsed.subgoal, False
        return INITIAL_SUBGOAL if current is None else current, False
    assert current is not None
    inconsistent = (
        parsed.switch is Switch.KEEP
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
            self.switches += p.switch is Switch.SWITCH
            self.keeps += p.switch is Switch.KEEP
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


# ----------------------------------------------------------------------------------------------- prompts

PROMPT_FAMILIES = ("household", "webshop")


@dataclass(frozen=True)
class PromptConfig:
    """Prompt rendering knobs.

    ``history_length``: how many of the most recent (observation, action) pairs are shown.
    ``max_chars``: if a rendered prompt is longer, the no-history variant is used for that turn (spec 2.3:
    13,000 characters for WebShop; household prompts never get near it). ``None`` disables the fallback.
    """

    history_length: int = 2
    max_chars: int | None = 13000


_ROLE = {
    "household": (
        "You control an agent in a text-based household simulator. You can only act through the text "
        "commands listed below."
    ),
    "webshop": (
        "You control a shopping agent on a simulated online store. You browse by searching and clicking, "
        "and the episode ends when you buy a product."
    ),
}

_PLAN = (
    "Work toward the task one sub-goal at a time. A sub-goal is a small objective that a few actions can "
    "reach; it is neither the whole task nor a single command. At every step, look at the sub-goal you are "
    "pursuing and decide whether to stay with it or to replace it."
)

_RULES = (
    "Answer with exactly three blocks, in this order, and write nothing before, between or after them (no "
    "explanations, no reasoning):\n"
    "1. <switch>...</switch> holds only the word KEEP (stay with the current sub-goal) or SWITCH (start a new "
    "one).\n"
    "2. <subgoal>...</subgoal> is required at every step. After KEEP, repeat the current sub-goal exactly as "
    "it is written above. After SWITCH, write a new, short sub-goal that a few actions can achieve; do not "
    "restate the whole task.\n"
    "3. <action>...</action> holds exactly one action, copied character for character from the available "
    "actions."
)

_FORMAT = (
    "Your answer must look like this:\n"
    "<switch>KEEP or SWITCH</switch>\n"
    "<subgoal>the sub-goal you follow now</subgoal>\n"
    "<action>one available action</action>"
)


def _render_household_actions(admissible: Sequence[str]) -> str:
    return "\n".join(f" '{a}'" for a in admissible if a.strip().lower() != "help")


def _render_webshop_actions(admissible: Sequence[str]) -> str:
    lines = []
    for a in admissible:
        a = a.strip()
        low = a.lower()
        if low == "search" or low.startswith("search["):
            item = "search[<your query>]"
        elif low.startswith("click[") and a.endswith("]"):
            item = a
        else:
            item = f"click[{a}]"
        if item not in lines:
            lines.append(item)
    return "\n".join(f" '{item}'" for item in lines)


def _webshop_observation(observation: str, task: str) -> str:
    """WebShop page text ``a [SEP] b [SEP] ...``: keep the parts after the instruction, each quoted."""
    parts = observation.split(" [SEP] ")
    if len(parts) == 1:
        return observation
    task_norm = task.strip().lower()
    cut = 0
    for i, part in enumerate(parts):
        if task_norm and part.strip().lower() == task_norm:
            cut = i + 1
            break
    kept = parts[cut:] or parts
    return " [SEP] ".join(f"'{p}'" for p in kept)


def _render(
    family: str,
    task: str,
    observation: str,
    actions_block: str,
    current_subgoal: str,
    history: Sequence[tuple[str, str]],
    step: int,
    first_history_step: int,
) -> str:
    parts = [_ROLE[family], _PLAN, f"Task: {task}"]
    if history:
        lines = [f"You have taken {step} step(s) so far. The last {len(history)} step(s):"]
        for k, (obs, act) in enumerate(history):
            i = first_history_step + k + 1
            lines.append(f"- Step {i} observation: {obs}\n  Step {i} action: {act}")
        parts.append("\n".join(lines))
    parts.append(f"Current observation (step {step + 1}): {observation}")
    if current_subgoal == INITIAL_SUBGOAL:
        parts.append(
            f"Current sub-goal: {INITIAL_SUBGOAL} (none chosen yet: answer SWITCH and write your first one)"
        )
    else:
        parts.append(f"Current sub-goal: {current_subgoal}")
    parts.append(f"Available actions:\n{actions_block}")
    parts.append(_RULES)
    parts.append(_FORMAT)
    return "\n\n".join(parts)


def render_prompt(
    family: str,
    *,
    task: str,
    observation: str,
    admissible: Sequence[str],
    current_subgoal: str | None,
    history: Sequence[tuple[str, str]] = (),
    step: int = 0,
    config: PromptConfig | None = None,
) -> str:
    """The user-message text for one turn.

    Args:
        family: ``"household"`` (embedded household world and ALFWorld) or ``"webshop"``.
        task: the task / instruction text.
        observation: the current observation (for WebShop the raw ``[SEP]`` page text is fine: the parts
            after the instruction are kept and quoted).
        admissible: the admissible actions. Household: ``'help'`` is dropped and each is quoted. WebShop:
            ``search``/``search[...]`` becomes ``search[<your query>]``, ``click[x]`` is kept, a bare ``x``
            becomes ``click[x]``.
        current_subgoal: the subgoal in force (``None`` -> ``"None"``, the start of an episode).
        history: all previous (observation, action) pairs of the episode; the last
            ``config.history_length`` are shown. Step 0 (or an empty history) uses the no-history variant.
        step: number of env steps taken so far (0 at the first turn).
        config: :class:`PromptConfig`; if the prompt exceeds ``max_chars`` the no-history variant is used.
    """
    if family not in PROMPT_FAMILIES:
        raise ValueError(f"unknown prompt family {family!r}; known: {PROMPT_FAMILIES}")
    cfg = config or PromptConfig()
    subgoal = INITIAL_SUBGOAL if current_subgoal is None or not current_subgoal.strip() else current_subgoal
    if family == "webshop":
        obs = _webshop_observation(observation, task)
        actions_block = _render_webshop_actions(admissible)
    else:
        obs = observation
        actions_block = _render_household_actions(admissible)
    k = cfg.history_length
    shown = list(history[-k:]) if (k > 0 and step > 0) else []
    if family == "webshop":
        shown = [(_webshop_observation(o, task), a) for o, a in shown]
    first = max(step - len(shown), 0)
    text = _render(family, task, obs, actions_block, subgoal, shown, step, first)
    if shown and cfg.max_chars is not None and len(text) > cfg.max_chars:
        text = _render(family, task, obs, actions_block, subgoal, [], step, step)
    return text


def chat_prompt(tokenizer, user_text: str) -> str:
    """Wrap ``user_text`` as a single user message with the tokenizer's chat template (generation prompt added).

    Every turn is a fresh single-message prompt; the history lives inside ``user_text`` (spec 2.2).
    """
    messages = [{"role": "user", "content": user_text}]
    out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(out, str):  # some tokenizer versions return a list for a single conversation
        out = out[0]
    return out

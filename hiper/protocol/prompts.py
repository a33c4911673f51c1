"""Prompt rendering: the official Plan-Execute prompt per family (spec §2.3), the compact CPU prompt, chat wrapping.

A *renderer* is ``renderer(family, *, task, observation, admissible, current_subgoal, history, step) -> str``;
:func:`render_prompt` is the official one and :func:`compact_renderer` a short one for CPU-sized models.
:data:`RENDERERS` maps the ``env.prompt`` config value to a renderer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hiper.protocol.grammar import INITIAL_SUBGOAL


@dataclass(frozen=True)
class PromptFamily:
    """How one family of envs is shown in the prompt.

    Attributes:
        role: the opening sentence (what the agent controls).
        render_actions: admissible actions -> the "Available actions" block.
        render_observation: ``(observation, task) -> text`` for the current and past observations (default: as is).
    """

    role: str
    render_actions: Callable[[Sequence[str]], str]
    render_observation: Callable[[str, str], str] | None = None


#: prompt family name -> :class:`PromptFamily`; :func:`register_family` adds one (an env names its family)
FAMILIES: dict[str, PromptFamily] = {}


def register_family(name: str, family: PromptFamily, *, replace: bool = False) -> PromptFamily:
    """Make ``name`` a prompt family the renderers know; ``ValueError`` if it exists (unless ``replace``)."""
    if name in FAMILIES and not replace and FAMILIES[name] != family:
        raise ValueError(f"prompt family {name!r} is already registered")
    FAMILIES[name] = family
    return family


def prompt_families() -> list[str]:
    """Names of the registered prompt families."""
    return sorted(FAMILIES)


@dataclass(frozen=True)
class PromptConfig:
    """Prompt rendering knobs.

    ``history_length``: how many of the most recent (observation, action) pairs are shown.
    ``max_chars``: if a rendered prompt is longer, the no-history variant is used for that turn (spec 2.3:
    13,000 characters for WebShop; household prompts never get near it). ``None`` disables the fallback.
    ``switch_hint``: before the first subgoal, add "(none chosen yet: answer SWITCH and write your first one)";
    hiper's addition, the official prompt shows only "None".
    """

    history_length: int = 2
    max_chars: int | None = 13000
    switch_hint: bool = True


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


register_family("household", PromptFamily(
    role="You control an agent in a text-based household simulator. You can only act through the text commands "
         "listed below.",
    render_actions=_render_household_actions,
))
register_family("webshop", PromptFamily(
    role="You control a shopping agent on a simulated online store. You browse by searching and clicking, and the "
         "episode ends when you buy a product.",
    render_actions=_render_webshop_actions,
    render_observation=_webshop_observation,
))


def _render(
    switch_hint: bool,
    family: str,
    task: str,
    observation: str,
    actions_block: str,
    current_subgoal: str | None,
    history: Sequence[tuple[str, str]],
    step: int,
    first_history_step: int,
) -> str:
    """One prompt's text; ``current_subgoal=None`` renders the flat (think-then-act) variant: no sub-goal concept,
    no sub-goal line, the flat answer format."""
    flat = current_subgoal is None
    parts = [FAMILIES[family].role, f"Task: {task}"] if flat else [FAMILIES[family].role, _PLAN, f"Task: {task}"]
    if history:
        lines = [f"You have taken {step} step(s) so far. The last {len(history)} step(s):"]
        for k, (obs, act) in enumerate(history):
            i = first_history_step + k + 1
            lines.append(f"- Step {i} observation: {obs}\n  Step {i} action: {act}")
        parts.append("\n".join(lines))
    parts.append(f"Current observation (step {step + 1}): {observation}")
    if current_subgoal == INITIAL_SUBGOAL and switch_hint:
        parts.append(
            f"Current sub-goal: {INITIAL_SUBGOAL} (none chosen yet: answer SWITCH and write your first one)"
        )
    elif not flat:
        parts.append(f"Current sub-goal: {current_subgoal}")
    parts.append(f"Available actions:\n{actions_block}")
    parts.extend((_FLAT_RULES, _FLAT_FORMAT) if flat else (_RULES, _FORMAT))
    return "\n\n".join(parts)


def _render_turn(
    family: str,
    task: str,
    observation: str,
    admissible: Sequence[str],
    subgoal: str | None,
    history: Sequence[tuple[str, str]],
    step: int,
    config: PromptConfig | None,
) -> str:
    """Family lookup, history window and the ``max_chars`` fallback shared by :func:`render_prompt` and
    :func:`render_flat_prompt` (``subgoal=None``)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown prompt family {family!r}; known: {prompt_families()} (add one with "
                         "hiper.protocol.register_family)")
    fam = FAMILIES[family]
    cfg = config or PromptConfig()
    show = fam.render_observation or (lambda o, _t: o)
    obs = show(observation, task)
    actions_block = fam.render_actions(admissible)
    k = cfg.history_length
    shown = [(show(o, task), a) for o, a in history[-k:]] if (k > 0 and step > 0) else []
    first = max(step - len(shown), 0)
    text = _render(cfg.switch_hint, family, task, obs, actions_block, subgoal, shown, step, first)
    if shown and cfg.max_chars is not None and len(text) > cfg.max_chars:
        text = _render(cfg.switch_hint, family, task, obs, actions_block, subgoal, [], step, step)
    return text


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
        family: a registered prompt family: ``"household"`` (embedded world and ALFWorld), ``"webshop"``, or one
            added with :func:`register_family`.
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
    subgoal = INITIAL_SUBGOAL if current_subgoal is None or not current_subgoal.strip() else current_subgoal
    return _render_turn(family, task, observation, admissible, subgoal, history, step, config)


def chat_prompt(tokenizer: Any, user_text: str) -> str:
    """Wrap ``user_text`` as a single user message with the tokenizer's chat template (generation prompt added).

    Every turn is a fresh single-message prompt; the history lives inside ``user_text`` (spec 2.2).
    """
    messages = [{"role": "user", "content": user_text}]
    out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(out, str):  # some tokenizer versions return a list for a single conversation
        out = out[0]
    return out


# ----------------------------------------------------------------------------------------------- compact

_WELCOME = "-= Welcome to TextWorld, ALFRED! =-"


def _clean_observation(observation: str) -> str:
    """Drop the TextWorld banner and the task sentence (the task has its own line) and blank lines."""
    text = observation.replace(_WELCOME, " ")
    cut = text.find("Your task is to:")
    if cut >= 0:
        text = text[:cut]
    return " ".join(text.split())


def compact_renderer(
    family: str,
    *,
    task: str,
    observation: str,
    admissible: Sequence[str],
    current_subgoal: str | None,
    history: Sequence[tuple[str, str]] = (),
    step: int = 0,
    **_: Any,
) -> str:
    """A short user prompt with the same slots as the standard one (spec 2.3), for CPU-sized models.

    Slots: task, the last actions taken (the history's actions), the current observation, the current
    subgoal ("None" at the start) and the admissible actions (``help`` dropped). About 60-120 tokens
    with the demo tokenizer instead of ~450 for :func:`hiper.protocol.render_prompt`.
    """
    del family
    subgoal = current_subgoal if current_subgoal and current_subgoal.strip() else INITIAL_SUBGOAL
    return _compact(task, observation, admissible, history, subgoal)


def _compact(
    task: str, observation: str, admissible: Sequence[str], history: Sequence[tuple[str, str]], subgoal: str | None
) -> str:
    """The compact prompt's lines; ``subgoal=None`` (the flat protocol) leaves out the ``subgoal:`` line."""
    lines = [f"task: {task}"]
    if history:
        lines.append("last: " + " ; ".join(a for _, a in history))
    lines.append(f"obs: {_clean_observation(observation)}")
    if subgoal is not None:
        lines.append(f"subgoal: {subgoal}")
    lines.append("actions: " + " | ".join(a for a in admissible if a.strip().lower() != "help"))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- flat (ReAct)

_FLAT_RULES = (
    "First think about the current situation step by step, inside <think>...</think>. Then give exactly one "
    "action, copied character for character from the available actions, inside <action>...</action>. Write "
    "nothing before, between or after the two blocks."
)
_FLAT_FORMAT = "Your answer must look like this:\n<think>your reasoning</think>\n<action>one available action</action>"


def render_flat_prompt(
    family: str,
    *,
    task: str,
    observation: str,
    admissible: Sequence[str],
    current_subgoal: str | None = None,
    history: Sequence[tuple[str, str]] = (),
    step: int = 0,
    config: PromptConfig | None = None,
) -> str:
    """The flat (ReAct-style) prompt of the paper's ablation (spec §6.3): the same role, task, history, observation
    and actions as :func:`render_prompt`, no sub-goal, and the think-then-act answer format of
    :mod:`hiper.protocol.flat`. ``current_subgoal`` is ignored (the flat protocol has none)."""
    del current_subgoal
    return _render_turn(family, task, observation, admissible, None, history, step, config)


def compact_flat_renderer(
    family: str,
    *,
    task: str,
    observation: str,
    admissible: Sequence[str],
    current_subgoal: str | None = None,
    history: Sequence[tuple[str, str]] = (),
    step: int = 0,
    **_: Any,
) -> str:
    """:func:`compact_renderer` without the sub-goal line, for the flat protocol on CPU-sized models."""
    del family, current_subgoal, step
    return _compact(task, observation, admissible, history, None)


#: ``env.prompt`` config value -> renderer (``render_prompt``'s history trimming is configured by the caller).
RENDERERS: dict[str, Callable[..., str]] = {
    "default": render_prompt,
    "compact": compact_renderer,
    "flat": render_flat_prompt,
    "compact_flat": compact_flat_renderer,
}
#: ``env.prompt`` config value -> the answer protocol it asks for (:data:`hiper.protocol.flat.PROTOCOLS`)
PROMPT_PROTOCOL: dict[str, str] = {
    "default": "plan_execute", "compact": "plan_execute", "flat": "flat", "compact_flat": "flat",
}

def quoted_actions(admissible: Sequence[str]) -> str:
    """One quoted action per line (``help`` dropped): the household rendering, a good default for a new family."""
    return _render_household_actions(admissible)


__all__ = ["FAMILIES", "PROMPT_PROTOCOL", "RENDERERS", "PromptConfig", "PromptFamily", "chat_prompt",
           "compact_flat_renderer", "compact_renderer", "prompt_families", "quoted_actions", "register_family",
           "render_flat_prompt", "render_prompt"]

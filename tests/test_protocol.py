"""Parser decision table (spec 2.5/2.6 malformed cases), KEEP semantics, round trips, prompts."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hiper.protocol import (
    INITIAL_SUBGOAL,
    REASON_CODES,
    ParsedResponse,
    ParseStats,
    PromptConfig,
    Switch,
    chat_prompt,
    format_response,
    next_subgoal,
    parse_response,
    render_prompt,
)

SHARED = Path(os.environ.get("HIPER_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
QWEN = SHARED / "models" / "qwen2.5-instruct-tokenizer"

GOOD = "<switch>SWITCH</switch>\n<subgoal>find the apple</subgoal>\n<action>go to countertop 1</action>"


def _p(text: str, strict: bool = False) -> ParsedResponse:
    return parse_response(text, strict=strict)


# ------------------------------------------------------------------------------------------- well-formed


def test_well_formed_switch_and_spans():
    p = _p(GOOD)
    assert p.valid and p.errors == () and p.warnings == ()
    assert p.decision is Switch.SWITCH and p.switch
    assert p.subgoal == "find the apple" and p.action == "go to countertop 1"
    assert GOOD[slice(*p.switch_span)] == "<switch>SWITCH</switch>"
    assert GOOD[slice(*p.subgoal_span)] == "<subgoal>find the apple</subgoal>"
    assert GOOD[slice(*p.action_span)] == "<action>go to countertop 1</action>"
    assert _p(GOOD, strict=True) == p


def test_well_formed_keep_is_not_boundary():
    p = _p(GOOD.replace("SWITCH", "KEEP"))
    assert p.valid and p.decision is Switch.KEEP and not p.switch


def test_whitespace_between_and_around_blocks_is_fine_in_both_modes():
    text = "\n  <switch>KEEP</switch>  \n\n<subgoal> find  it </subgoal><action>\tlook\n</action>\n\n"
    for strict in (False, True):
        p = _p(text, strict)
        assert p.valid, p.errors
        assert p.subgoal == "find  it" and p.action == "look"
        assert text[slice(*p.subgoal_span)] == "<subgoal> find  it </subgoal>"


def test_action_is_lower_cased_and_stripped():
    assert _p(GOOD.replace("go to countertop 1", "  Go To Countertop 1 ")).action == "go to countertop 1"


# ------------------------------------------------------------------------------------------- decision table


@pytest.mark.parametrize(
    ("text", "errors", "switch", "subgoal", "action", "boundary"),
    [
        # missing <action> tags: nothing to execute, whole response is the action for training (spans test)
        (
            "<switch>SWITCH</switch><subgoal>find it</subgoal>",
            ("missing_action",),
            Switch.SWITCH,
            "find it",
            "",
            True,
        ),
        # unclosed action (e.g. truncated generation): its text is still sent
        (
            "<switch>KEEP</switch><subgoal>find it</subgoal><action>go to desk 1",
            ("unclosed_action",),
            Switch.KEEP,
            "find it",
            "go to desk 1",
            False,
        ),
        # missing switch block: INVALID switch, never a boundary
        (
            "<subgoal>find it</subgoal><action>look</action>",
            ("missing_switch",),
            Switch.INVALID,
            "find it",
            "look",
            False,
        ),
        # switch value that is neither KEEP nor SWITCH (official trainer: boundary; here: invalid, no boundary)
        (
            "<switch>SWITCH or KEEP</switch><subgoal>find it</subgoal><action>look</action>",
            ("bad_switch_value",),
            Switch.INVALID,
            "find it",
            "look",
            False,
        ),
        (
            "<switch></switch><subgoal>find it</subgoal><action>look</action>",
            ("bad_switch_value",),
            Switch.INVALID,
            "find it",
            "look",
            False,
        ),
        # missing / empty subgoal: SWITCH cannot start a segment without a subgoal
        (
            "<switch>SWITCH</switch><action>look</action>",
            ("missing_subgoal",),
            Switch.SWITCH,
            None,
            "look",
            False,
        ),
        (
            "<switch>SWITCH</switch><subgoal>  </subgoal><action>look</action>",
            ("empty_subgoal",),
            Switch.SWITCH,
            "",
            "look",
            False,
        ),
        (
            "<switch>KEEP</switch><subgoal>find it</subgoal><action> </action>",
            ("empty_action",),
            Switch.KEEP,
            "find it",
            "",
            False,
        ),
        # unclosed subgoal: not adopted
        (
            "<switch>SWITCH</switch><subgoal>find it<action>look</action>",
            ("unclosed_subgoal",),
            Switch.SWITCH,
            None,
            "look",
            False,
        ),
        (
            "<switch>SWITCH<subgoal>a</subgoal><action>look</action>",
            ("unclosed_switch",),
            Switch.INVALID,
            "a",
            "look",
            False,
        ),
        # out of order: invalid, but the blocks are still read
        (
            "<subgoal>find it</subgoal><switch>SWITCH</switch><action>look</action>",
            ("wrong_order",),
            Switch.SWITCH,
            "find it",
            "look",
            True,
        ),
        # duplicates: the first closed block is used
        (
            "<switch>SWITCH</switch><subgoal>a</subgoal><action>look</action><action>go to desk 1</action>",
            ("duplicate_action",),
            Switch.SWITCH,
            "a",
            "look",
            True,
        ),
        (
            "<switch>KEEP</switch><switch>SWITCH</switch><subgoal>a</subgoal><action>look</action>",
            ("duplicate_switch",),
            Switch.KEEP,
            "a",
            "look",
            False,
        ),
        # CJK anywhere
        (
            "<switch>SWITCH</switch><subgoal>找苹果</subgoal><action>look</action>",
            ("cjk",),
            Switch.SWITCH,
            "找苹果",
            "look",
            True,
        ),
        (
            "<switch>KEEP</switch><subgoal>a</subgoal><action>look</action>好的",
            ("cjk",),
            Switch.KEEP,
            "a",
            "look",
            False,
        ),
        # no tags at all
        (
            "go to desk 1",
            ("missing_switch", "missing_subgoal", "missing_action"),
            Switch.INVALID,
            None,
            "",
            False,
        ),
        ("", ("missing_switch", "missing_subgoal", "missing_action"), Switch.INVALID, None, "", False),
        # close tag without open tag
        (
            "<switch>KEEP</switch><subgoal>a</subgoal>go to desk 1</action>",
            ("missing_action",),
            Switch.KEEP,
            "a",
            "",
            False,
        ),
    ],
)
def test_malformed_decision_table(text, errors, switch, subgoal, action, boundary):
    p = _p(text)
    assert set(errors) <= set(p.errors), p.errors
    assert not p.valid
    assert p.decision is switch
    assert p.subgoal == subgoal
    assert p.action == action
    assert p.switch is boundary
    assert set(p.errors) | set(p.warnings) <= set(REASON_CODES)


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        ("Sure! " + GOOD, "text_outside_blocks"),
        (GOOD + " I hope this helps.", "text_outside_blocks"),
        (
            "<switch>SWITCH</switch> because <subgoal>a</subgoal>\n<action>look</action>",
            "text_outside_blocks",
        ),
        ("<Switch>SWITCH</Switch><SUBGOAL>a</SUBGOAL><action>look</action>", "tag_case"),
        ("<switch> keep </switch><subgoal>a</subgoal><action>look</action>", "switch_case"),
        ("<switch>Switch</switch><subgoal>a</subgoal><action>look</action>", "switch_case"),
    ],
)
def test_lenient_warnings_are_errors_in_strict_mode(text, warning):
    lenient, strict = _p(text), _p(text, strict=True)
    assert lenient.valid and warning in lenient.warnings and lenient.errors == ()
    assert not strict.valid and strict.warnings == ()
    assert warning in strict.errors or (warning == "switch_case" and "bad_switch_value" in strict.errors)
    if warning == "switch_case":  # strict mode does not read a non-canonical switch value
        assert lenient.decision is not Switch.INVALID and strict.decision is Switch.INVALID


def test_unclosed_and_stray_text_is_not_double_counted_as_outside_text():
    p = _p("<switch>KEEP</switch><subgoal>a</subgoal><action>look")
    assert p.errors == ("unclosed_action",) and p.warnings == ()
    p = _p("<switch>KEEP</switch><subgoal>a</subgoal><action>look</action><action>x</action>")
    assert p.errors == ("duplicate_action",) and p.warnings == ()


def test_nested_blocks_are_unclosed():
    p = _p("<switch>SWITCH</switch><subgoal>a <action>look</action></subgoal>")
    assert "unclosed_subgoal" in p.errors and p.subgoal is None and p.action == "look"


def test_spans_only_for_closed_blocks_and_index_text():
    p = _p("x <switch>KEEP</switch> y <subgoal>a</subgoal> z <action>look")
    assert p.text[slice(*p.switch_span)] == "<switch>KEEP</switch>"
    assert p.text[slice(*p.subgoal_span)] == "<subgoal>a</subgoal>"
    assert p.action_span is None


def test_never_raises_on_odd_input():
    for text in [
        None,
        123,
        "<",
        "<<switch>>",
        "</switch></subgoal></action>",
        "<action></action>" * 3,
        "\x00\ud800",
    ]:
        p = parse_response(text)  # type: ignore[arg-type]
        assert isinstance(p, ParsedResponse) and not p.valid


def test_parsed_response_is_frozen_and_fast_path_equals_slow_path():
    from hiper.protocol.grammar import _parse_slow

    p = _p(GOOD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.valid = False  # type: ignore[misc]
    assert p == _parse_slow(GOOD, False) == _parse_slow(GOOD, True)
    assert dataclasses.replace(p, valid=False).valid is False


# ------------------------------------------------------------------------------------------- round trips

_content = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="<"), min_size=1, max_size=40
).filter(lambda s: s.strip() != "")


@settings(max_examples=150, deadline=None)
@given(
    switch=st.sampled_from([Switch.KEEP, Switch.SWITCH, "keep", "SWITCH"]), subgoal=_content, action=_content
)
def test_format_parse_round_trip(switch, subgoal, action):
    from hiper.protocol.grammar import _parse_slow

    try:
        text = format_response(switch, subgoal, action)
    except ValueError:  # CJK content cannot be written validly
        from hiper.protocol.grammar import _CJK

        assert _CJK.search(subgoal + action)
        return
    for strict in (False, True):
        p = parse_response(text, strict=strict)
        assert p == _parse_slow(text, strict)
        assert p.valid, (text, p.errors)
        assert p.decision is Switch(str(switch).upper())
        assert p.subgoal == subgoal.strip()
        assert p.action == action.strip().lower()
        assert p.switch is (p.decision is Switch.SWITCH)


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(max_size=80)
    | st.lists(
        st.sampled_from(
            [
                "<switch>",
                "</switch>",
                "<subgoal>",
                "</subgoal>",
                "<action>",
                "</action>",
                "KEEP",
                "SWITCH",
                "x",
                " ",
                "\n",
                "找",
            ]
        ),
        max_size=12,
    ).map("".join),
    strict=st.booleans(),
)
def test_parse_invariants_on_arbitrary_text(text, strict):
    from hiper.protocol.grammar import _parse_slow

    p = parse_response(text, strict=strict)
    assert p == _parse_slow(text, strict)  # the single-regex fast path agrees with the general parser
    assert p.valid == (p.errors == ())
    assert p.switch == (p.decision is Switch.SWITCH and bool(p.subgoal))
    for span, name in zip(p.spans, ("switch", "subgoal", "action")):
        if span is not None:
            assert text[span[0] : span[1]].lower().startswith(f"<{name}>")
            assert text[span[0] : span[1]].lower().endswith(f"</{name}>")
    if p.valid:
        assert p.subgoal and p.action and p.decision is not Switch.INVALID


def test_format_response_rejects_unwritable_inputs():
    with pytest.raises(ValueError):
        format_response(Switch.INVALID, "a", "b")
    with pytest.raises(ValueError):
        format_response("MAYBE", "a", "b")
    with pytest.raises(ValueError):
        format_response("KEEP", "  ", "b")
    with pytest.raises(ValueError):
        format_response("KEEP", "a", "x</action>")
    assert (
        format_response("keep", " a ", "look")
        == "<switch>KEEP</switch>\n<subgoal>a</subgoal>\n<action>look</action>"
    )


# ------------------------------------------------------------------------------------------- KEEP semantics


def _resp(switch: str, subgoal: str | None) -> ParsedResponse:
    sg = "" if subgoal is None else f"<subgoal>{subgoal}</subgoal>"
    return parse_response(f"<switch>{switch}</switch>{sg}<action>look</action>")


def test_next_subgoal_switch_takes_new_subgoal():
    assert next_subgoal("find the apple", _resp("SWITCH", "heat the apple")) == ("heat the apple", False)


def test_next_subgoal_keep_carries_current_and_flags_altered_text():
    assert next_subgoal("find the apple", _resp("KEEP", "find the apple")) == ("find the apple", False)
    assert next_subgoal("find the apple", _resp("KEEP", " find  the\napple ")) == ("find the apple", False)
    assert next_subgoal("find the apple", _resp("KEEP", "find the red apple")) == ("find the apple", True)
    assert next_subgoal("find the apple", _resp("KEEP", "Find the apple")) == ("find the apple", True)


def test_next_subgoal_keep_without_subgoal_is_not_inconsistent():
    assert next_subgoal("find the apple", _resp("KEEP", None)) == ("find the apple", False)


def test_next_subgoal_invalid_switch_carries_over():
    assert next_subgoal("find the apple", _resp("MAYBE", "something else")) == ("find the apple", False)
    assert next_subgoal("find the apple", _resp("SWITCH", " ")) == ("find the apple", False)
    assert next_subgoal("find the apple", parse_response("go to desk 1")) == ("find the apple", False)


def test_next_subgoal_first_decision_adopts_any_written_subgoal():
    for current in (None, "None", INITIAL_SUBGOAL, ""):
        assert next_subgoal(current, _resp("KEEP", "find the apple")) == ("find the apple", False)
        assert next_subgoal(current, _resp("MAYBE", "find the apple")) == ("find the apple", False)
    assert next_subgoal(None, parse_response("nothing")) == (INITIAL_SUBGOAL, False)


# ------------------------------------------------------------------------------------------- stats


def test_parse_stats_counts_every_reason():
    stats = ParseStats()
    stats.update(_p(GOOD))
    stats.update([_p("go"), _p("Sure " + GOOD)])
    d = stats.as_dict()
    assert stats.total == 3 and stats.invalid == 1
    assert d["parse/missing_action"] == 1 and d["parse/text_outside_blocks"] == 2  # "go" is outside text too
    assert d["parse/invalid_rate"] == pytest.approx(1 / 3)
    other = ParseStats().update(_p("x"))
    assert stats.merge(other).total == 4 and stats.counts["missing_switch"] == 2


# ------------------------------------------------------------------------------------------- prompts

HOUSEHOLD = dict(
    task="put a clean apple in the fridge",
    observation="You arrive at countertop 1. On the countertop 1, you see an apple 1.",
    admissible=["go to fridge 1", "take apple 1 from countertop 1", "help", "look"],
)


def test_household_prompt_step0_has_no_history_and_none_subgoal():
    text = render_prompt("household", **HOUSEHOLD, current_subgoal=None, history=[], step=0)
    assert "Current sub-goal: None" in text
    assert "Task: put a clean apple in the fridge" in text
    assert " 'go to fridge 1'\n 'take apple 1 from countertop 1'\n 'look'" in text
    assert "'help'" not in text
    assert "step(s) so far" not in text
    # format rules, then the format restated at the very end
    assert text.index("<switch>...</switch>") < text.rindex("<switch>KEEP or SWITCH</switch>")
    assert text.rstrip().endswith("<action>one available action</action>")


def test_household_prompt_shows_only_last_history_pairs():
    history = [(f"obs {i}", f"act {i}") for i in range(5)]
    text = render_prompt("household", **HOUSEHOLD, current_subgoal="find the apple", history=history, step=5)
    assert "obs 2" not in text and "act 2" not in text
    assert "Step 4 observation: obs 3" in text and "Step 5 action: act 4" in text
    assert "You have taken 5 step(s) so far" in text
    assert "Current sub-goal: find the apple" in text
    text1 = render_prompt(
        "household",
        **HOUSEHOLD,
        current_subgoal="x",
        history=history,
        step=5,
        config=PromptConfig(history_length=1),
    )
    assert "obs 3" not in text1 and "obs 4" in text1


def test_webshop_prompt_actions_observation_and_length_fallback():
    task = "i need a red shirt, price lower than 30 dollars"
    obs = (
        f"Instruction: [SEP] {task} [SEP] Back to Search [SEP] Next > [SEP] B0ABC [SEP] Red shirt [SEP] $20.0"
    )
    kw = dict(task=task, observation=obs, admissible=["search", "click[back to search]", "next >", "b0abc"])
    text = render_prompt("webshop", **kw, current_subgoal="open a red shirt", history=[("o", "a")], step=1)
    assert " 'search[<your query>]'\n 'click[back to search]'\n 'click[next >]'\n 'click[b0abc]'" in text
    assert "'Back to Search' [SEP] 'Next >' [SEP] 'B0ABC'" in text
    long_history = [("x" * 9000, "click[a]"), ("y" * 9000, "click[b]")]
    fallback = render_prompt(
        "webshop", **kw, current_subgoal="open a red shirt", history=long_history, step=2
    )
    assert "xxxx" not in fallback and "yyyy" not in fallback
    assert "Current sub-goal: open a red shirt" in fallback
    assert len(fallback) < PromptConfig().max_chars


def test_render_prompt_unknown_family():
    with pytest.raises(ValueError, match="unknown prompt family"):
        render_prompt("chess", task="t", observation="o", admissible=[], current_subgoal=None)


@pytest.mark.skipif(not QWEN.exists(), reason=f"shared Qwen2.5 tokenizer missing at {QWEN}")
def test_chat_prompt_single_user_message_with_generation_prompt():
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(QWEN))
    text = chat_prompt(tok, "hello there")
    assert text.count("<|im_start|>user\nhello there<|im_end|>") == 1
    assert text.endswith("<|im_start|>assistant\n")


def test_parsed_response_pickles_for_worker_processes():
    import pickle

    for text in (GOOD, "Sure! <switch>keep</switch><subgoal>a</subgoal>"):
        p = _p(text)
        q = pickle.loads(pickle.dumps(p))
        assert q == p and hash(q) == hash(p) and q.decision is p.decision


def test_history_length_zero_and_no_length_fallback():
    history = [("obs 0", "act 0")]
    none = render_prompt(
        "household",
        **HOUSEHOLD,
        current_subgoal="x",
        history=history,
        step=1,
        config=PromptConfig(history_length=0),
    )
    assert "obs 0" not in none and "Current observation (step 2)" in none
    big = [("z" * 20000, "look")]
    kept = render_prompt(
        "household",
        **HOUSEHOLD,
        current_subgoal="x",
        history=big,
        step=1,
        config=PromptConfig(max_chars=None),
    )
    assert "z" * 20000 in kept


def test_subgoal_may_contain_angle_brackets_that_are_not_tags():
    p = _p("<switch>SWITCH</switch><subgoal>open the <red> box</subgoal><action>look</action>")
    assert p.valid and p.subgoal == "open the <red> box" and p.warnings == ()


def test_tags_and_switch_values_fold_ascii_case_only() -> None:
    """Unicode case folding would accept look-alikes: U+017F (long s) upper-cases to 'S', U+212A (Kelvin) is 'k'."""
    long_s = "<\u017fwitch>SWITCH</\u017fwitch><subgoal>g</subgoal><action>look</action>"
    p = parse_response(long_s)
    assert not p.valid and p.decision is Switch.INVALID and "missing_switch" in p.errors
    strict = parse_response("<switch>KEEP</switch>\n<subgoal>g</subgoal>\n<action>look</action>\n<\u017fwitch>x", strict=True)
    assert strict.errors == ("text_outside_blocks",)  # stray text, not a duplicate switch block
    p = parse_response("<switch>\u017fWITCH</switch><subgoal>g</subgoal><action>look</action>")
    assert p.decision is Switch.INVALID and "bad_switch_value" in p.errors
    p = parse_response("<switch>\u212aEEP</switch><subgoal>g</subgoal><action>look</action>")
    assert p.decision is Switch.INVALID and "bad_switch_value" in p.errors
    assert parse_response("<SWITCH>keep</SWITCH><subgoal>g</subgoal><action>look</action>").decision is Switch.KEEP

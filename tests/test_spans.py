"""Token spans: byte table, char-span -> token-mask mapping and value read positions.

The reference for every mask is independent of :mod:`hiper.protocol.spans`: the tokenizer's own char offsets
(``return_offsets_mapping``); a token belongs to a block if its char range overlaps the block's char span.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiper.protocol import format_response, parse_response
from hiper.protocol.spans import SpanBatch, TokenByteTable, token_spans

SHARED = Path(os.environ.get("HIPER_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
QWEN = SHARED / "models" / "qwen2.5-instruct-tokenizer"
QWEN_EOS = 151645  # <|im_end|>

needs_qwen = pytest.mark.skipif(not QWEN.exists(), reason=f"shared Qwen2.5 tokenizer missing at {QWEN}")


@pytest.fixture(scope="module")
def qwen():
    transformers = pytest.importorskip("transformers")
    if not QWEN.exists():
        pytest.skip(f"shared Qwen2.5 tokenizer missing at {QWEN}")
    tok = transformers.AutoTokenizer.from_pretrained(str(QWEN))
    return tok, TokenByteTable.from_tokenizer(tok)


def _tiny_byte_level_bpe():
    """A GPT-2-style byte-level BPE trained in code on a tiny corpus (no download)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        format_response("KEEP", "find the apple.", "go to desk 1"),
        format_response("SWITCH", "heat the mug (microwave)", "take mug 1 from countertop 2"),
        "héllo wörld 😀 找苹果 ¿qué? naïve café",
    ] * 30
    tk.train_from_iterator(corpus, trainer)
    return tk


# --------------------------------------------------------------------------------------------- reference


def _reference(text: str, offsets: list[tuple[int, int]], n_tokens: int):
    """Masks and v_low from char offsets of the first ``len(offsets)`` tokens (the rest: special tokens)."""
    p = parse_response(text)
    masks = []
    for span in p.spans:
        m = np.zeros(n_tokens, dtype=bool)
        if span is not None:
            for j, (s, e) in enumerate(offsets):
                m[j] = s < span[1] and e > span[0] and e > s
        masks.append(m)
    # one role per token: a token overlapping two blocks belongs to the block holding its first char, else to
    # the first block (in the text) it overlaps
    for j, (s, _) in enumerate(offsets):
        roles = [k for k in range(3) if masks[k][j]]
        if len(roles) > 1:
            own = [k for k in roles if p.spans[k][0] <= s < p.spans[k][1]]
            keep = own[0] if own else min(roles, key=lambda k: p.spans[k][0])
            for k in roles:
                masks[k][j] = k == keep
    if p.action_span is None:
        masks[2] = np.ones(n_tokens, dtype=bool)
    close = p.subgoal_span or p.switch_span
    v_low = 0 if close is None else sum(1 for s, _ in offsets if s < close[1])
    return p, masks, min(v_low, max(n_tokens - 1, 0))


def _check_byte_cover(
    table: TokenByteTable, ids: list[int], mask: np.ndarray, span_bytes: bytes, byte_start: int
):
    """Masked tokens are contiguous and cover the span; only the two boundary tokens may stick out. The one
    exception (one role per token): the span's first bytes may sit in a token that starts in the block before it,
    which keeps that token (``><`` of touching blocks); then the mask starts right after that token."""
    idx = np.flatnonzero(mask)
    assert idx.size and (np.diff(idx) == 1).all()
    lens = table.lengths[np.asarray(ids)]
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    first, last = idx[0], idx[-1]
    lead = byte_start - starts[first]
    if lead < 0:  # the token before ``first`` starts before the span and reaches into it
        assert first > 0 and starts[first - 1] < byte_start < starts[first - 1] + lens[first - 1]
        span_bytes, byte_start, lead = span_bytes[starts[first] - byte_start :], int(starts[first]), 0
    covered = table.token_bytes([ids[j] for j in idx])
    trail = (starts[last] + lens[last]) - (byte_start + len(span_bytes))
    assert 0 <= lead < lens[first] and 0 <= trail < lens[last]
    assert covered[lead : lead + len(span_bytes)] == span_bytes


# --------------------------------------------------------------------------------------------- byte table


@needs_qwen
def test_decode_matches_tokenizer(qwen):
    tok, table = qwen
    texts = [
        format_response("KEEP", "find the apple.", "go to desk 1"),
        "héllo wörld 😀👍🏽 找苹果 ¿qué? naïve\n\n\tcafé <tool_call> x",
        "   leading spaces and trailing   ",
    ]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False) + [QWEN_EOS]
        assert table.decode(ids) == tok.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        assert table.decode(ids, skip_special_tokens=False) == tok.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        assert table.decode(torch.tensor(ids)) == table.decode(np.array(ids))
    assert table.lengths[QWEN_EOS] == 0 and table.special[QWEN_EOS] == b"<|im_end|>"


@needs_qwen
def test_out_of_range_ids_have_no_bytes(qwen):
    _, table = qwen
    assert table.token_bytes([-1, table.vocab_size, 10**9]) == b""
    sb = token_spans(table, torch.tensor([[27, 10**9, 29]]))
    assert sb.parsed[0].text == "<>"


def test_non_byte_level_tokenizer_is_rejected():
    tokenizers = pytest.importorskip("tokenizers")
    word_level = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="byte-level BPE"):
        TokenByteTable.from_tokenizer(word_level)
    with pytest.raises(TypeError, match="fast"):
        TokenByteTable.from_tokenizer(object())


# --------------------------------------------------------------------------------------------- fixed cases


@needs_qwen
def test_canonical_response_masks_and_v_low(qwen):
    tok, table = qwen
    text = format_response("SWITCH", "find the apple.", "go to countertop 1")
    ids = tok.encode(text) + [QWEN_EOS]
    sb = token_spans(table, torch.tensor([ids]))
    assert isinstance(sb, SpanBatch) and sb.parsed[0].valid and sb.parsed[0].text == text

    def masked(mask):
        return tok.decode([i for i, m in zip(ids, mask[0].tolist()) if m])

    # BPE merges '>' with the following newline: the boundary token is included
    assert masked(sb.switch_mask) == "<switch>SWITCH</switch>\n"
    assert masked(sb.subgoal_mask) == "<subgoal>find the apple.</subgoal>\n"
    assert masked(sb.action_mask) == "<action>go to countertop 1</action>"
    assert not sb.action_mask[0, -1] and not sb.subgoal_mask[0, -1]  # EOS is never in a block
    v_low = int(sb.v_low_pos[0])
    assert tok.decode(ids[:v_low]) == "<switch>SWITCH</switch>\n<subgoal>find the apple.</subgoal>\n"
    assert tok.decode(ids[v_low:]).startswith("<action>")
    assert int(sb.v_high_pos[0]) == 0 and not sb.action_fallback[0]
    assert sb.switch.tolist() == [True] and sb.valid.tolist() == [True]


@needs_qwen
def test_fallbacks_action_mask_and_v_low(qwen):
    tok, table = qwen
    rows = [
        "<switch>KEEP</switch>\n<subgoal>find it</subgoal>\ngo to desk 1",  # no action: whole response
        "<switch>KEEP</switch>\ngo to desk 1",  # no subgoal: v_low after </switch>
        "go to desk 1",  # nothing: v_low = 0
        "<switch>KEEP</switch><subgoal>find it</subgoal>",  # subgoal closes the response: clamp
    ]
    enc = [tok.encode(r) for r in rows]
    sb = token_spans(table, enc)
    assert sb.response_mask.sum(1).tolist() == [len(e) for e in enc]
    assert torch.equal(sb.action_mask[0], sb.response_mask[0]) and sb.action_fallback[:3].all()
    assert tok.decode(enc[1][: int(sb.v_low_pos[1])]) == "<switch>KEEP</switch>\n"
    assert int(sb.v_low_pos[2]) == 0
    assert int(sb.v_low_pos[3]) == len(enc[3]) - 1  # clamped to the last valid position


@needs_qwen
def test_multibyte_chars_split_across_tokens_and_truncated(qwen):
    tok, table = qwen
    text = "<switch>SWITCH</switch>\n<subgoal>find the 🍎 and the 找 thing ü</subgoal>\n<action>go to desk 1</action>𓀀"
    ids = tok.encode(text)
    pieces = [table.pieces[i] for i in ids]
    assert any(p and not _is_whole_utf8(p) for p in pieces), "expected at least one token splitting a char"
    sb = token_spans(table, [ids])
    assert sb.parsed[0].text == text and "cjk" in sb.parsed[0].errors
    # truncate in the middle of the final hieroglyph (4 bytes over 3 tokens): invalid UTF-8 at the end, one U+FFFD per dangling byte
    cut = ids[:-1]
    raw = table.token_bytes(cut)
    assert not _is_whole_utf8(raw)
    sb = token_spans(table, [cut])
    p = sb.parsed[0]
    assert p.text.startswith(text[:-1]) and set(p.text[len(text) - 1 :]) == {"\ufffd"}
    _, masks, v_low = _reference(
        text, tok(text, return_offsets_mapping=True)["offset_mapping"][:-1], len(cut)
    )
    for got, ref in zip((sb.switch_mask, sb.subgoal_mask, sb.action_mask), masks):
        assert got[0].numpy().tolist() == ref.tolist()
    assert int(sb.v_low_pos[0]) == v_low


def _is_whole_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@needs_qwen
def test_list_tensor_and_numpy_inputs_agree_and_mask_validation(qwen):
    tok, table = qwen
    rows = [tok.encode(format_response("KEEP", "a", "look")), tok.encode("<switch>SWITCH</switch> x")]
    a = token_spans(table, rows)
    width = max(map(len, rows)) + 3
    ids = torch.full((2, width), 151643)
    mask = torch.zeros(2, width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    b = token_spans(table, ids, mask)
    c = token_spans(table, ids.numpy(), mask.numpy())
    for name in ("action_mask", "subgoal_mask", "switch_mask", "response_mask"):
        width_a = getattr(a, name).shape[-1]
        assert torch.equal(getattr(b, name), getattr(c, name))
        assert torch.equal(getattr(a, name), getattr(b, name)[:, :width_a])
        assert not getattr(b, name)[:, width_a:].any()
    assert torch.equal(a.v_low_pos, b.v_low_pos)
    assert a.parsed == b.parsed
    with pytest.raises(ValueError, match="right-padded"):
        token_spans(table, ids, ~mask)
    with pytest.raises(ValueError, match="shape"):
        token_spans(table, ids, mask[:, :-1])
    empty = token_spans(table, [[]])
    assert empty.action_mask.shape == (1, 0) and int(empty.v_low_pos[0]) == 0


# --------------------------------------------------------------------------------------------- property tests

_chars = st.sampled_from(
    list("abcxyz .,!?]):/\n\t-0123456789")
    + ["é", "ü", "ñ", "€", "😀", "👍🏽", "🍎", "找", "苹果", "\u0301", "\u200d", "<", ">", "ß", "Ω"]
)
_content = st.lists(_chars, max_size=12).map("".join) | st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Co")), max_size=8
)
_sep = st.sampled_from(["", "\n", " ", "\n\n", " \n", "\t"])


@st.composite
def responses(draw) -> str:
    """Mostly protocol-shaped text with random damage: dropped tags, extra text, odd content."""
    parts = [draw(st.sampled_from(["", "", "Sure! ", "好的 ", "\n"]))]
    for name, value in (
        ("switch", st.sampled_from(["KEEP", "SWITCH", "keep", " SWITCH ", "SWITCH or KEEP", ""])),
        ("subgoal", _content),
        ("action", _content),
    ):
        open_tag = draw(st.sampled_from([f"<{name}>"] * 8 + ["", f"<{name.upper()}>"]))
        close_tag = draw(st.sampled_from([f"</{name}>"] * 8 + ["", f"</{name}>\n"]))
        parts += [open_tag, draw(value) if name != "switch" else draw(value), close_tag, draw(_sep)]
    parts.append(draw(st.sampled_from(["", "", ".", " done", "\n\n", "</action>"])))
    return unicodedata.normalize("NFC", "".join(parts))


@needs_qwen
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(responses(), min_size=1, max_size=4), eos=st.booleans())
def test_masks_match_tokenizer_offsets_qwen(qwen, batch, eos):
    tok, table = qwen
    _check_batch(tok, table, batch, eos_id=QWEN_EOS if eos else None)


def _check_batch(tok, table, batch: list[str], eos_id: int | None) -> None:
    encs = [tok(t, add_special_tokens=False, return_offsets_mapping=True) for t in batch]
    rows = [list(e["input_ids"]) + ([eos_id] if eos_id is not None else []) for e in encs]
    sb = token_spans(table, rows)
    for r, (text, enc, ids) in enumerate(zip(batch, encs, rows)):
        n = len(ids)
        p, masks, v_low = _reference(text, [tuple(o) for o in enc["offset_mapping"]], n)
        assert sb.parsed[r] == p  # the trainer-side parse equals the env-side parse of the decoded text
        for name, got, ref, span in zip(
            ("switch", "subgoal", "action"), (sb.switch_mask, sb.subgoal_mask, sb.action_mask), masks, p.spans
        ):
            assert got[r, :n].numpy().tolist() == ref.tolist(), (name, text)
            assert not got[r, n:].any()
            if span is not None:
                span_bytes = text[span[0] : span[1]].encode()
                _check_byte_cover(table, ids, got[r, :n].numpy(), span_bytes, len(text[: span[0]].encode()))
        assert int(sb.v_low_pos[r]) == v_low, text
        assert int(sb.v_high_pos[r]) == 0


@pytest.fixture(scope="module")
def tiny():
    transformers = pytest.importorskip("transformers")
    raw = _tiny_byte_level_bpe()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=raw), TokenByteTable.from_tokenizer(raw)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(responses(), min_size=1, max_size=3))
def test_masks_match_offsets_any_byte_level_bpe(tiny, batch):
    tok, table = tiny
    _check_batch(tok, table, batch, eos_id=0)
    for text in batch:
        ids = tok.encode(text)
        assert table.decode(ids) == tok.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )


@needs_qwen
def test_boundary_tokens_merging_a_tag_with_outside_text_are_included(qwen):
    tok, table = qwen
    text = "Sure! <switch>KEEP</switch> <subgoal>find it.</subgoal>\n\n<action>look</action>\n"
    ids = tok.encode(text)
    sb = token_spans(table, [ids])

    def masked(mask):
        return tok.decode([i for i, m in zip(ids, mask[0].tolist()) if m])

    # ' <' carries the space before the tag, '>\n\n' / '>\n' the newlines after it: both belong to the block
    assert masked(sb.switch_mask) == " <switch>KEEP</switch>"
    assert masked(sb.subgoal_mask) == " <subgoal>find it.</subgoal>\n\n"
    assert masked(sb.action_mask) == "<action>look</action>\n"
    assert sb.parsed[0].warnings == ("text_outside_blocks",) and sb.parsed[0].valid


@needs_qwen
def test_lazy_canonical_rows_equal_the_eager_parse(qwen):
    """Canonical ASCII rows take the span-only fast path; their parses, flags and masks equal an eager parse."""
    tok, table = qwen
    texts = [
        format_response("SWITCH", "find the apple", "go to countertop 1"),
        format_response("KEEP", "find the apple", "open fridge 1"),
        "  " + format_response("KEEP", "x", "look") + "\n",
        "<switch>KEEP</switch><subgoal>   </subgoal><action>look</action>",  # blank subgoal: general parser
        "<switch>SWITCH or KEEP</switch><subgoal>a</subgoal><action>b</action>",
        "I think I should go to shelf 6 now.",
        "<switch>SWITCH</switch>\n<subgoal>find the mug</subgoal>\n<action>take mug 1 from desk 1</action>",
    ]
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [QWEN_EOS] for t in texts]
    sb = token_spans(table, ids)
    eager = [parse_response(t) for t in texts]
    assert list(sb.parsed) == eager and sb.parsed[1:3] == eager[1:3]
    assert sb.switch.tolist() == [p.switch for p in eager] == [True, False, False, False, False, False, True]
    assert sb.valid.tolist() == [p.valid for p in eager]
    for r, text in enumerate(texts):  # the masks are the reference's: tokens overlapping the spans, one role each
        offs = [tuple(o) for o in tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
        p, ref, _ = _reference(text, offs, len(offs) + 1)
        assert p == eager[r]
        for want, mask in ((ref[0], sb.switch_mask), (ref[1], sb.subgoal_mask)):
            assert mask[r, : len(want)].tolist() == want.tolist()


def test_a_token_straddling_touching_blocks_gets_one_role(qwen) -> None:
    """Blocks written without newlines merge into ``><`` tokens that overlap two blocks; each such token belongs to
    the block its first byte lies in (docs/protocol.md), so no token carries two advantages."""
    tok, table = qwen
    text = "<switch>KEEP</switch><subgoal>find the mug</subgoal><action>go to desk 1</action>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    sb = token_spans(table, [ids])
    sw, sg, ac = (getattr(sb, f"{r}_mask")[0] for r in ("switch", "subgoal", "action"))
    assert not bool((sw & sg).any() or (sg & ac).any() or (sw & ac).any())
    straddling = [j for j, p in enumerate(pieces) if p == "><"]
    assert len(straddling) == 2
    assert bool(sw[straddling[0]]) and bool(sg[straddling[1]])  # the '>' that closes the earlier block
    assert bool((sw | sg | ac).all())  # and every token still has its role
    assert int(sb.v_low_pos[0]) == straddling[1] + 1  # V_low still reads right after </subgoal>

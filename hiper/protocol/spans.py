"""Char spans of the protocol blocks -> token masks and value read positions, for a whole batch at once.

The official trainer decodes every response token by token in Python and searches for a list of close-tag
variants that BPE merges produce (``.</subgoal>``, ``>\\n`` ...). Here every token id maps to its raw bytes
through a table built once per tokenizer (:class:`TokenByteTable`); byte offsets of a batch are a ``cumsum``
of byte lengths; the response text is parsed once with :func:`hiper.protocol.parse_response`; and each
block's char span becomes a byte span and then a token mask by **byte overlap**. A token that merges a tag
with a neighbouring character (``.</subgoal>``, ``</action>\\n``) overlaps the span and is included, so no
variant list is needed. Only the parse is per-response Python work; masks are built with numpy for the
whole batch.

Read positions (spec 3.4): ``values[:, j]`` is the critic output after consuming response tokens ``< j``.
``v_high_pos = 0`` (the pre-decision value, also the read position of ``V_term``); ``v_low_pos`` is the
first token that starts at or after the end of ``</subgoal>`` (fallback: of ``</switch>``; else 0),
clamped to the last valid response position when the tag closes the response.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from hiper.protocol.flat import parser_for
from hiper.protocol.grammar import _FAST_NONBLANK, ParsedResponse

__all__ = ["ParsedRows", "SpanBatch", "TokenByteTable", "bytes_to_unicode", "token_spans"]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-char map used by every byte-level BPE vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _backend(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` behind a transformers tokenizer (or the object itself)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend
    if hasattr(tokenizer, "to_str") and hasattr(tokenizer, "get_vocab"):
        return tokenizer
    raise TypeError(
        f"{type(tokenizer).__name__} has no fast (tokenizers) backend; TokenByteTable needs a byte-level BPE "
        "fast tokenizer (Qwen2, GPT-2, Llama-3 style)"
    )


def _is_byte_level(backend: Any) -> bool:
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    stack = [decoder]
    while stack:
        d = stack.pop()
        if d.get("type") == "ByteLevel":
            return True
        stack.extend(d.get("decoders") or [])
    return False


class TokenByteTable:
    """Raw UTF-8 bytes of every token id of a byte-level BPE tokenizer; build once per tokenizer.

    Attributes:
        pieces: object array ``[V + 1]`` of ``bytes``; special added tokens (``<|im_end|>``...) and ids the
            tokenizer does not know map to ``b""``, so the bytes of a response equal
            ``tokenizer.decode(ids, skip_special_tokens=True)`` before UTF-8 decoding. Index ``V`` is a
            sentinel ``b""`` used for out-of-range ids.
        lengths: int64 array ``[V + 1]``, ``len(pieces[i])`` in bytes.
        special: dict ``id -> content bytes`` of the special tokens (used by ``decode(..., skip_special_tokens=False)``).
    """

    def __init__(self, pieces: Sequence[bytes], special: dict[int, bytes] | None = None) -> None:
        self.vocab_size = len(pieces)
        self.pieces = np.empty(self.vocab_size + 1, dtype=object)
        self.pieces[: self.vocab_size] = list(pieces)
        self.pieces[self.vocab_size] = b""
        self.lengths = np.fromiter((len(p) for p in self.pieces), dtype=np.int64, count=self.vocab_size + 1)
        self.special = dict(special or {})
        self._offsets = np.zeros(self.vocab_size + 1, dtype=np.int64)
        np.cumsum(self.lengths[:-1], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(self.pieces.tolist()), dtype=np.uint8)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenByteTable:
        """Build the table from a transformers fast tokenizer or a ``tokenizers.Tokenizer``.

        Raises ``ValueError`` for tokenizers that are not byte-level BPE (SentencePiece/metaspace ones such as
        Llama-2 have no byte table; their tokens do not map to bytes one-to-one).
        """
        backend = _backend(tokenizer)
        if not _is_byte_level(backend):
            raise ValueError(
                "TokenByteTable supports byte-level BPE tokenizers only (decoder type ByteLevel: Qwen2, GPT-2, "
                f"Llama-3 ...); {type(tokenizer).__name__} has decoder {json.loads(backend.to_str()).get('decoder')}"
            )
        vocab: dict[str, int] = backend.get_vocab(with_added_tokens=True)
        added = backend.get_added_tokens_decoder()  # id -> AddedToken(content, special=...)
        size = max(max(vocab.values(), default=-1), max(added, default=-1)) + 1
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        pieces: list[bytes] = [b""] * size
        for token, idx in vocab.items():
            try:
                pieces[idx] = bytes(byte_of[c] for c in token)
            except KeyError:  # not a byte-mapped string (should only be added tokens, handled below)
                pieces[idx] = token.encode("utf-8")
        special: dict[int, bytes] = {}
        for idx, tok in added.items():
            content = tok.content.encode("utf-8")
            if tok.special:
                special[idx] = content
                pieces[idx] = b""
            else:  # non-special added tokens (e.g. Qwen's <tool_call>) are kept by decode(skip_special_tokens=True)
                pieces[idx] = content
        return cls(pieces, special)

    def safe_ids(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` with out-of-range values replaced by the sentinel (empty-bytes) index ``V``."""
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            return np.where((ids >= 0) & (ids < self.vocab_size), ids, self.vocab_size)
        return ids

    def token_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """Concatenated raw bytes of ``ids`` (special tokens contribute nothing)."""
        arr = self.safe_ids(np.asarray(ids, dtype=np.int64).reshape(-1))
        if arr.size == 0:
            return b""
        # gather from one flat byte buffer: cheaper than joining a list of python bytes objects
        n_bytes = self.lengths[arr]
        src = np.repeat(self._offsets[arr] - (np.cumsum(n_bytes) - n_bytes), n_bytes)
        src += np.arange(src.size, dtype=np.int64)
        return self._buffer[src].tobytes()

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Fast equivalent of ``tokenizer.decode(ids, skip_special_tokens=..., clean_up_tokenization_spaces=False)``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        arr = self.safe_ids(np.asarray(ids, dtype=np.int64).reshape(-1))
        if skip_special_tokens or not self.special:
            return b"".join(self.pieces[arr].tolist()).decode("utf-8", errors="replace")
        return b"".join(self.special.get(int(i), self.pieces[i]) for i in arr).decode(
            "utf-8", errors="replace"
        )


class ParsedRows(Sequence[ParsedResponse]):
    """``parse_response`` of each row, built on first access.

    Canonical ASCII rows (most of a trained policy's output) get their spans from one regex match in
    :func:`token_spans`; their :class:`ParsedResponse` objects are only made when someone reads them.
    """

    def __init__(
        self, items: list[ParsedResponse | None], texts: list[str | None], strict: bool, protocol: str = "plan_execute"
    ) -> None:
        self._items, self._texts, self._strict = items, texts, strict
        self._parse = parser_for(protocol)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        p = self._items[i]
        if p is None:
            p = self._items[i] = self._parse(self._texts[i], self._strict)
        return p

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"ParsedRows({list(self)!r})"


@dataclass
class SpanBatch:
    """Token masks and value read positions of a batch of responses (all tensors on CPU).

    Attributes:
        parsed: one :class:`ParsedResponse` per row, parsed from the token bytes (see :func:`token_spans`).
        action_mask, subgoal_mask, switch_mask: bool ``[B, L]``; tokens whose bytes overlap the block's span
            (tags included), ANDed with ``response_mask``. ``action_mask`` falls back to the whole
            ``response_mask`` when the response has no closed action block (``action_fallback``).
        response_mask: bool ``[B, L]``.
        v_high_pos: int64 ``[B]``, zeros: the pre-decision read position (``V_high`` and ``V_term``).
        v_low_pos: int64 ``[B]``: first position after ``</subgoal>`` (fallback ``</switch>``, else 0).
        action_fallback: bool ``[B]``: the action mask is the whole response.
    """

    parsed: Sequence[ParsedResponse]
    action_mask: torch.Tensor
    subgoal_mask: torch.Tensor
    switch_mask: torch.Tensor
    response_mask: torch.Tensor
    v_high_pos: torch.Tensor
    v_low_pos: torch.Tensor
    action_fallback: torch.Tensor
    #: bool ``[B]``: ``parsed[i].switch`` / ``parsed[i].valid`` (filled by :func:`token_spans`)
    boundary_flags: torch.Tensor | None = None
    valid_flags: torch.Tensor | None = None

    @property
    def switch(self) -> torch.Tensor:
        """bool ``[B]``: ``parsed[i].switch``."""
        if self.boundary_flags is not None:
            return self.boundary_flags
        return torch.tensor([p.switch for p in self.parsed], dtype=torch.bool)

    @property
    def valid(self) -> torch.Tensor:
        """bool ``[B]``: ``parsed[i].valid``."""
        if self.valid_flags is not None:
            return self.valid_flags
        return torch.tensor([p.valid for p in self.parsed], dtype=torch.bool)


def _pad(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max(initial=0))
    mask = np.arange(width)[None, :] < lengths[:, None]
    ids = np.zeros((len(rows), width), dtype=np.int64)
    if width:
        ids[mask] = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(lengths.sum()))
    return ids, mask


_SURROGATE_TO_REPLACEMENT = {c: "\ufffd" for c in range(0xDC80, 0xDD00)}


def _decode_with_offsets(raw: bytes) -> tuple[str, np.ndarray | None]:
    """Decode response bytes; return ``(text, char_to_byte)`` where ``char_to_byte`` is ``None`` for ASCII.

    ``char_to_byte[c]`` is the byte offset of char ``c`` (length ``len(text) + 1``). Invalid UTF-8 (a
    multi-byte char cut by truncation, or garbage) becomes one U+FFFD **per invalid byte**, so the mapping
    stays exact; ``tokenizer.decode`` may instead collapse a run of invalid bytes into one U+FFFD.
    """
    try:
        text = raw.decode("utf-8")
        if len(text) == len(raw):
            return text, None
        escaped = text
    except UnicodeDecodeError:
        escaped = raw.decode("utf-8", errors="surrogateescape")
        text = escaped.translate(_SURROGATE_TO_REPLACEMENT)
    code = np.frombuffer(escaped.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
    nbytes = 1 + (code >= 0x80).astype(np.int64) + (code >= 0x800) + (code >= 0x10000)
    nbytes[(code >= 0xDC80) & (code <= 0xDCFF)] = 1  # an escaped invalid byte
    char_to_byte = np.zeros(len(code) + 1, dtype=np.int64)
    np.cumsum(nbytes, out=char_to_byte[1:])
    return text, char_to_byte


def _one_role_per_token(masks: list[np.ndarray], token_starts: np.ndarray, spans: np.ndarray) -> list[np.ndarray]:
    """Make the three block masks disjoint: a token overlapping two blocks (touching blocks merge, e.g. Qwen's
    ``><`` token in ``</switch><subgoal>``) belongs to the block its first byte lies in, or, when its first byte
    lies in no block (a gap character merged with a tag), to the first block it overlaps.

    ``masks``: three bool ``[B, L]`` (switch, subgoal, action); ``token_starts`` ``[B, L]`` global byte offsets;
    ``spans`` ``[B, 3, 2]`` global byte spans of the blocks (empty spans never contain a byte).
    """
    stacked = np.stack(masks)  # [3, B, L]
    shared = stacked.sum(axis=0) > 1
    if not shared.any():
        return masks
    starts_in = (token_starts[None] >= spans[:, :, 0].T[:, :, None]) & (token_starts[None] < spans[:, :, 1].T[:, :, None])
    own = stacked & starts_in  # the block holding the token's first byte (at most one: blocks are disjoint)
    # no block holds the first byte: the overlapped block that starts first
    block_start = np.where(stacked, spans[:, :, 0].T[:, :, None], np.iinfo(np.int64).max)
    first_block = stacked & (block_start == block_start.min(axis=0, keepdims=True))
    chosen = np.where(own.any(axis=0, keepdims=True), own, first_block)
    return [np.where(shared, chosen[k], stacked[k]) for k in range(3)]


def token_spans(
    table: TokenByteTable,
    response_ids: torch.Tensor | np.ndarray | Sequence[Sequence[int]],
    response_mask: torch.Tensor | np.ndarray | None = None,
    *,
    strict: bool = False,
    protocol: str = "plan_execute",
) -> SpanBatch:
    """Parse each response from its token bytes and turn the block spans into token masks.

    Args:
        table: the tokenizer's :class:`TokenByteTable`.
        response_ids: int ``[B, L]`` right-padded response token ids, or a list of ``B`` id lists.
        response_mask: bool ``[B, L]`` valid response tokens (a prefix of each row); default all True for a
            tensor input, the list lengths for a list input.
        strict: passed to :func:`~hiper.protocol.parse_response`.
        protocol: ``plan_execute`` (the three blocks) or ``flat`` (:mod:`hiper.protocol.flat`: the action mask
            covers the whole think-and-act answer).

    Returns:
        a :class:`SpanBatch`. A token is in a block's mask if its byte range overlaps the block's byte span;
        tokens with no bytes (special tokens such as ``<|im_end|>``, padding) are never in a block mask.
    """
    if isinstance(response_ids, torch.Tensor):
        ids = response_ids.detach().cpu().numpy().astype(np.int64, copy=False)
    elif isinstance(response_ids, np.ndarray):
        ids = response_ids.astype(np.int64, copy=False)
    else:
        ids, list_mask = _pad(response_ids)
        if response_mask is None:
            response_mask = list_mask
    if ids.ndim != 2:
        raise ValueError(f"response_ids must be [B, L], got shape {tuple(ids.shape)}")
    mask: np.ndarray
    if response_mask is None:
        mask = np.ones(ids.shape, dtype=bool)
    else:
        mask = (
            response_mask.detach().cpu().numpy() if isinstance(response_mask, torch.Tensor) else response_mask
        ).astype(bool, copy=False)
        if mask.shape != ids.shape:
            raise ValueError(
                f"response_mask shape {tuple(mask.shape)} != response_ids shape {tuple(ids.shape)}"
            )
        if mask.shape[1] > 1 and (mask[:, 1:] & ~mask[:, :-1]).any():
            raise ValueError("response_mask must be right-padded (each row's valid tokens form a prefix)")
    n_rows, width = ids.shape
    safe = table.safe_ids(ids)

    # byte offsets of every token, whole batch at once; masked tokens have no bytes
    lens = table.lengths[safe] * mask
    ends = np.cumsum(lens, axis=1)
    starts = ends - lens
    row_bytes = ends[:, -1] if width else np.zeros(n_rows, dtype=np.int64)
    row_offset = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(row_bytes, out=row_offset[1:])
    blob = table.token_bytes(safe[mask])

    # per row: decode, parse, char spans -> byte spans (the only Python loop)
    flat_spans: list[int] = []  # per row: switch, subgoal, action (start, end) byte spans; (0, 0) = no span
    parsed: list[ParsedResponse | None] = []  # None: canonical row, parsed lazily by ParsedRows
    texts: list[str | None] = []
    boundary: list[bool] = []
    valid: list[bool] = []
    offsets = row_offset.tolist()
    empty = (0, 0)
    # all-ASCII batch (the common case): decode once; char offsets are byte offsets
    ascii_text = blob.decode("ascii") if blob.isascii() else None
    parse = parser_for(protocol)
    canonical = _FAST_NONBLANK.match if protocol == "plan_execute" else None
    for r in range(n_rows):
        if ascii_text is not None and canonical is not None:
            lo, hi = offsets[r], offsets[r + 1]
            m = canonical(ascii_text, lo, hi)  # \Z matches at hi
            if m is not None:  # exactly parse_response's fast path: valid, spans = the regex groups
                regs = m.regs
                flat_spans.extend((regs[1][0] - lo, regs[1][1] - lo, regs[3][0] - lo, regs[3][1] - lo,
                                   regs[5][0] - lo, regs[5][1] - lo))  # fmt: skip
                parsed.append(None)
                texts.append(ascii_text[lo:hi])
                boundary.append(regs[2][1] - regs[2][0] == 6)  # SWITCH (non-blank subgoal guaranteed)
                valid.append(True)
                continue
            text, char_to_byte = ascii_text[lo:hi], None
        elif ascii_text is not None:
            text, char_to_byte = ascii_text[offsets[r] : offsets[r + 1]], None
        else:
            text, char_to_byte = _decode_with_offsets(blob[offsets[r] : offsets[r + 1]])
        p = parse(text, strict)
        parsed.append(p)
        texts.append(None)
        boundary.append(p.switch)
        valid.append(p.valid)
        spans = (p.switch_span or empty) + (p.subgoal_span or empty) + (p.action_span or empty)
        if char_to_byte is not None:
            spans = tuple(char_to_byte[list(spans)].tolist())
        flat_spans.extend(spans)
    span_arr = np.array(flat_spans, dtype=np.int64).reshape(n_rows, 3, 2) + row_offset[:-1, None, None]
    has_action = span_arr[:, 2, 1] > span_arr[:, 2, 0]
    # V_low reads after </subgoal>, else after </switch>, else at 0 (an empty span gives position <= 0)
    low_end = np.where(span_arr[:, 1, 1] > span_arr[:, 1, 0], span_arr[:, 1, 1], span_arr[:, 0, 1])

    # token index ranges by binary search over the whole batch's (monotone) global byte offsets:
    # first token ending after the span start .. first token starting at/after the span end
    row_base = (np.arange(n_rows, dtype=np.int64) * width)[:, None]
    ends_flat = (ends + row_offset[:-1, None]).ravel()
    starts_flat = (starts + row_offset[:-1, None]).ravel()
    first = np.searchsorted(ends_flat, span_arr[:, :, 0], side="right") - row_base
    stop = np.searchsorted(starts_flat, span_arr[:, :, 1], side="left") - row_base
    pos = np.arange(width, dtype=np.int64)[None, :]
    nonempty = lens > 0  # special tokens and padding have no bytes and are never in a block mask
    masks = [(pos >= first[:, k, None]) & (pos < stop[:, k, None]) & nonempty for k in range(3)]
    masks = _one_role_per_token(masks, starts + row_offset[:-1, None], span_arr)
    action_mask = np.where(has_action[:, None], masks[2], mask)

    # value read position: the number of tokens that start before the close tag's end, i.e. the index of
    # the first token after it; clamped into the valid response
    n_valid = mask.sum(axis=1)
    v_low = np.searchsorted(starts_flat, low_end, side="left") - row_base[:, 0]
    v_low = np.clip(v_low, 0, np.maximum(n_valid - 1, 0))

    return SpanBatch(
        parsed=ParsedRows(parsed, texts, strict, protocol),
        action_mask=torch.from_numpy(action_mask),
        subgoal_mask=torch.from_numpy(masks[1]),
        switch_mask=torch.from_numpy(masks[0]),
        response_mask=torch.from_numpy(np.ascontiguousarray(mask)),
        v_high_pos=torch.zeros(n_rows, dtype=torch.long),
        v_low_pos=torch.from_numpy(v_low.astype(np.int64)),
        action_fallback=torch.from_numpy(~has_action),
        boundary_flags=torch.tensor(boundary, dtype=torch.bool),
        valid_flags=torch.tensor(valid, dtype=torch.bool),
    )

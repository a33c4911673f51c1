"""Pure-Python emulation of the Anserini/Lucene BM25 search WebShop uses (no JVM).

The original builds a Lucene index of each product's ``contents`` with Anserini's default English
analyzer and searches it with ``SimpleSearcher.search(query, k=50)`` (BM25, k1=0.9, b=0.4). This
module reproduces that ranking exactly; every step below mirrors a Lucene behaviour:

* **Analyzer** -- StandardTokenizer (Unicode UAX#29 word segments that contain a letter or digit, each
  Extended_Pictographic sequence as its own token) -> EnglishPossessiveFilter (strip a trailing
  ``'s``/``’s``) -> LowerCaseFilter -> StopFilter (Lucene's 33 English stop words) -> PorterStemFilter
  (nltk's Porter stemmer in MARTIN_EXTENSIONS mode equals Lucene's on this corpus).
* **Length norms** -- a document's length (number of indexed tokens) is stored as one byte with
  ``SmallFloat.intToByte4`` and decoded with ``byte4ToInt`` (exact below 24, then a 4-bit float).
* **Scoring** -- per term ``w - w / (1 + tf * normInv)`` in float32 with ``w = boost * idf``,
  ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``, ``normInv = 1 / (k1 * ((1 - b) + b * L / avgdl))``,
  query-term boost = its count in the query; the per-document sum is accumulated in float64 and
  cast to float32 (Lucene's disjunction scorer).
* **Order** -- score descending, then the collection docid (the ASIN) ascending: Anserini searches with
  ``Sort(score, id)``, so ties are broken by external id at every rank including the k-th. The reported
  scores then go through Anserini's tie adjustment (rounded to 4 decimals, minus 1e-6 per earlier tie).
* **Unicode** -- ``Extended_Pictographic`` is spelled out as a table because the ``regex`` module's
  property misses symbols such as U+2605 that Lucene emits as tokens (this shifts avgdl).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import regex

K1 = np.float32(0.9)
B = np.float32(0.4)
SEARCH_RETURN_N = 50

#: Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET
LUCENE_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split()
)

_BOUNDARY = regex.compile(r"(?V1w)\b")
_WORD_CHAR = regex.compile(r"[\p{Lu}\p{Ll}\p{Lt}\p{Lo}\p{Nd}\p{Nl}\u3005\u303B\u309D\u309E\u30FD\u30FE]")
#: Unicode Extended_Pictographic (emoji-data, Unicode 14), as inclusive code point ranges. The
#: ``regex`` module's own ``\p{Extended_Pictographic}`` misses e.g. U+2605 BLACK STAR, which Lucene's
#: StandardTokenizer emits as a token, so the table is spelled out here.
EXTENDED_PICTOGRAPHIC_RANGES = (
    (0x00A9, 0x00A9), (0x00AE, 0x00AE), (0x203C, 0x203C), (0x2049, 0x2049), (0x2122, 0x2122),
    (0x2139, 0x2139), (0x2194, 0x2199), (0x21A9, 0x21AA), (0x231A, 0x231B), (0x2328, 0x2328),
    (0x2388, 0x2388), (0x23CF, 0x23CF), (0x23E9, 0x23F3), (0x23F8, 0x23FA), (0x24C2, 0x24C2),
    (0x25AA, 0x25AB), (0x25B6, 0x25B6), (0x25C0, 0x25C0), (0x25FB, 0x25FE), (0x2600, 0x2605),
    (0x2607, 0x2612), (0x2614, 0x2685), (0x2690, 0x2705), (0x2708, 0x2712), (0x2714, 0x2714),
    (0x2716, 0x2716), (0x271D, 0x271D), (0x2721, 0x2721), (0x2728, 0x2728), (0x2733, 0x2734),
    (0x2744, 0x2744), (0x2747, 0x2747), (0x274C, 0x274C), (0x274E, 0x274E), (0x2753, 0x2755),
    (0x2757, 0x2757), (0x2763, 0x2767), (0x2795, 0x2797), (0x27A1, 0x27A1), (0x27B0, 0x27B0),
    (0x27BF, 0x27BF), (0x2934, 0x2935), (0x2B05, 0x2B07), (0x2B1B, 0x2B1C), (0x2B50, 0x2B50),
    (0x2B55, 0x2B55), (0x3030, 0x3030), (0x303D, 0x303D), (0x3297, 0x3297), (0x3299, 0x3299),
    (0x1F000, 0x1F0FF), (0x1F10D, 0x1F10F), (0x1F12F, 0x1F12F), (0x1F16C, 0x1F171), (0x1F17E, 0x1F17F),
    (0x1F18E, 0x1F18E), (0x1F191, 0x1F19A), (0x1F1AD, 0x1F1E5), (0x1F201, 0x1F20F), (0x1F21A, 0x1F21A),
    (0x1F22F, 0x1F22F), (0x1F232, 0x1F23A), (0x1F23C, 0x1F23F), (0x1F249, 0x1F3FA), (0x1F400, 0x1F53D),
    (0x1F546, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F774, 0x1F77F), (0x1F7D5, 0x1F7FF), (0x1F80C, 0x1F80F),
    (0x1F848, 0x1F84F), (0x1F85A, 0x1F85F), (0x1F888, 0x1F88F), (0x1F8AE, 0x1F8FF), (0x1F90C, 0x1F93A),
    (0x1F93C, 0x1F945), (0x1F947, 0x1FAFF), (0x1FC00, 0x1FFFD),
)
_EXT_PICT = "".join(
    chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in EXTENDED_PICTOGRAPHIC_RANGES
)
# one emoji: a pictographic char with its modifiers / VS16, joined to more by ZWJ
_EMOJI_SEQ = regex.compile(
    rf"[{_EXT_PICT}][\p{{Grapheme_Extend}}\p{{EMod}}\uFE0F]*"
    rf"(?:\u200D[{_EXT_PICT}][\p{{Grapheme_Extend}}\p{{EMod}}\uFE0F]*)*"
)
_APOSTROPHES = "'\u2019\uff07"
_HALFWIDTH_KATAKANA_MARKS = str.maketrans("", "", "\uff9e\uff9f")


def _java_lower(token: str) -> str:
    """Lower-case per code point like Java's ``Character.toLowerCase`` (Python maps U+0130 to 2 chars)."""
    return token.replace("\u0130", "i").lower()


def tokenize(text: str) -> list[str]:
    """StandardTokenizer emulation: the raw (un-normalised) tokens of ``text``, in order."""
    cuts = [m.start() for m in _BOUNDARY.finditer(text)]
    tokens: list[str] = []
    for start, end in zip(cuts, cuts[1:]):
        segment = text[start:end]
        if _WORD_CHAR.search(segment):
            segment = segment.lstrip(_APOSTROPHES[0]).translate(_HALFWIDTH_KATAKANA_MARKS)
            if segment:
                tokens.append(segment)
        elif not segment.isascii():
            tokens.extend(m.group(0) for m in _EMOJI_SEQ.finditer(segment))
    return tokens


class Analyzer:
    """Anserini's default English analyzer; stems are cached per token."""

    def __init__(self) -> None:
        from nltk.stem.porter import PorterStemmer  # optional dependency (webshop extra)

        self._stemmer = PorterStemmer(mode=PorterStemmer.MARTIN_EXTENSIONS)
        self._cache: dict[str, str | None] = {}

    def _normalise(self, token: str) -> str | None:
        cached = self._cache.get(token, "")
        if cached != "":
            return cached
        term: str | None
        stripped = token[:-2] if len(token) >= 2 and token[-2] in _APOSTROPHES and token[-1] in "sS" else token
        term = _java_lower(stripped)
        if term in LUCENE_STOP_WORDS:
            term = None
        else:
            term = self._stemmer.stem(term, to_lowercase=False)
        self._cache[token] = term
        return term

    def analyze(self, text: str) -> list[str]:
        """The indexed terms of ``text`` (stop words removed, stemmed)."""
        out = []
        for tok in tokenize(text):
            term = self._normalise(tok)
            if term is not None and term != "":
                out.append(term)
        return out


def int_to_byte4(i: int) -> int:
    """Lucene ``SmallFloat.intToByte4``: 24 exact values, then a float with a 4-bit mantissa."""
    if i < 24:
        return i
    v = i - 24
    num_bits = v.bit_length()
    if num_bits < 4:
        enc = v
    else:
        shift = num_bits - 4
        enc = ((v >> shift) & 0x07) | ((shift + 1) << 3)
    return 24 + enc


def byte4_to_int(b: int) -> int:
    """Lucene ``SmallFloat.byte4ToInt`` (inverse of :func:`int_to_byte4`, lossy)."""
    if b < 24:
        return b
    i = b - 24
    bits, shift = i & 0x07, (i >> 3) - 1
    decoded = bits if shift == -1 else (bits | 0x08) << shift
    return min(24 + decoded, 2**31 - 1)


@dataclass
class SearchHit:
    docid: int
    score: float  # Anserini-reported score (tie-adjusted)
    raw_score: float  # float32 Lucene score


class BM25Index:
    """In-memory BM25 index over documents given in docid order."""

    def __init__(
        self, documents: Iterable[str], external_ids: list[str] | None = None, k1: float = 0.9, b: float = 0.4
    ) -> None:
        self.analyzer = Analyzer()
        k1_32, b_32 = np.float32(k1), np.float32(b)
        postings: dict[str, dict[int, int]] = {}
        lengths: list[int] = []
        for docid, text in enumerate(documents):
            terms = self.analyzer.analyze(text)
            lengths.append(len(terms))
            for term, tf in Counter(terms).items():
                postings.setdefault(term, {})[docid] = tf
        self.n_docs = len(lengths)
        self.external_ids = list(external_ids) if external_ids is not None else [f"{i:09d}" for i in range(self.n_docs)]
        if len(self.external_ids) != self.n_docs:
            raise ValueError(f"{len(self.external_ids)} external ids for {self.n_docs} documents")
        self._external_rank = np.empty(self.n_docs, dtype=np.int64)
        self._external_rank[np.argsort(np.asarray(self.external_ids), kind="stable")] = np.arange(self.n_docs)
        self.doc_lengths = np.asarray(lengths, dtype=np.int64)
        self.norm_bytes = np.asarray([int_to_byte4(n) for n in lengths], dtype=np.int64)
        avgdl = np.float32(float(self.doc_lengths.sum()) / float(max(self.n_docs, 1)))
        length_table = np.asarray([byte4_to_int(i) for i in range(256)], dtype=np.float32)
        with np.errstate(divide="ignore"):
            cache = np.float32(1.0) / (k1_32 * ((np.float32(1.0) - b_32) + b_32 * length_table / avgdl))
        self.norm_inverse = cache.astype(np.float32)[self.norm_bytes]  # [n_docs] float32
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {
            term: (
                np.fromiter(d.keys(), dtype=np.int64, count=len(d)),
                np.fromiter(d.values(), dtype=np.float32, count=len(d)),
            )
            for term, d in postings.items()
        }
        self._cache: dict[str, list[SearchHit]] = {}

    def idf(self, term: str) -> np.float32:
        df = len(self.postings[term][0])
        return np.float32(np.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5)))

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[SearchHit]:
        """Top-``k`` hits for ``query`` (bag of words, each term boosted by its count)."""
        key = f"{k}\x00{query}"
        hit_list = self._cache.get(key)
        if hit_list is None:
            hit_list = self._search(query, k)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = hit_list
        return hit_list

    def _search(self, query: str, k: int) -> list[SearchHit]:
        counts = Counter(self.analyzer.analyze(query))
        totals = np.zeros(self.n_docs, dtype=np.float64)
        matched = np.zeros(self.n_docs, dtype=bool)
        for term, count in counts.items():
            if term not in self.postings:
                continue
            docs, tf = self.postings[term]
            weight = np.float32(count) * self.idf(term)
            scores = weight - weight / (np.float32(1.0) + tf * self.norm_inverse[docs])
            totals[docs] += scores.astype(np.float64)
            matched[docs] = True
        candidates = np.flatnonzero(matched)
        if candidates.size == 0:
            return []
        scores32 = totals[candidates].astype(np.float32)
        # Anserini searches with Sort(score desc, external id asc): ties at every rank, including the
        # k-th, are broken by the collection docid (the ASIN), not by Lucene's internal docid
        top = np.lexsort((self._external_rank[candidates], -scores32))[:k]
        ranked = [(float(scores32[pos]), int(candidates[pos])) for pos in top]
        hits: list[SearchHit] = []
        dup = 0
        for rank, (raw, docid) in enumerate(ranked):
            dup = dup + 1 if rank > 0 and raw == hits[-1].raw_score else 0
            adjusted = round(raw * 10000) / 10000 - dup * 1e-6
            hits.append(SearchHit(docid=docid, score=adjusted, raw_score=raw))
        return hits

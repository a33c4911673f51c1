"""thefuzz 0.19.0 ``token_set_ratio`` semantics, on the standard library's ``difflib``.

WebShop's reward calls ``thefuzz.fuzz.token_set_ratio`` from thefuzz 0.19.0 *without*
python-Levenshtein, i.e. on ``difflib.SequenceMatcher``. This module re-implements that behaviour
(not the code) so rewards are bit-identical:

* inputs that are not ``str`` are ``str()``-ed (a ``(name, value)`` tuple becomes
  ``"('color', 'coal grey')"``);
* ``full_process`` with ``force_ascii``: drop the code points U+0080..U+00FF (only those: thefuzz's
  "asciidammit" table), replace every ``\\W`` (Unicode) character with a space, lower-case, strip;
* either side empty after processing -> 0;
* tokens are split on whitespace into sets; intersection / differences are sorted and joined;
* the score is the max of three ``ratio`` calls, each ``int(round(100 * SequenceMatcher.ratio()))``
  with ``ratio(a, b) = 100`` when ``a == b`` and ``0`` when either is empty.

``SequenceMatcher`` (with its default autojunk heuristic) is not an edit-distance metric, so
rapidfuzz's ``fuzz.ratio`` can differ from it; difflib is used to stay exact. Results are cached.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from functools import lru_cache
from typing import Any

_NON_WORD = re.compile(r"(?ui)\W")
_LATIN1_HIGH = {code: None for code in range(128, 256)}


def full_process(value: Any, force_ascii: bool = True) -> str:
    """thefuzz 0.19 ``utils.full_process`` (``force_ascii`` only removes U+0080..U+00FF)."""
    text = value if isinstance(value, str) else str(value)
    if force_ascii:
        text = text.translate(_LATIN1_HIGH)
    return _NON_WORD.sub(" ", text).lower().strip()


def ratio(a: str, b: str) -> int:
    """thefuzz 0.19 ``fuzz.ratio`` on two already processed strings."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * SequenceMatcher(None, a, b).ratio()))


@lru_cache(maxsize=200_000)
def _token_set_processed(p1: str, p2: str) -> int:
    if not p1 or not p2:
        return 0
    tokens1, tokens2 = set(p1.split()), set(p2.split())
    sect = " ".join(sorted(tokens1 & tokens2))
    diff_1to2 = " ".join(sorted(tokens1 - tokens2))
    diff_2to1 = " ".join(sorted(tokens2 - tokens1))
    combined_1to2 = (sect + " " + diff_1to2).strip()
    combined_2to1 = (sect + " " + diff_2to1).strip()
    sect = sect.strip()
    return max(ratio(sect, combined_1to2), ratio(sect, combined_2to1), ratio(combined_1to2, combined_2to1))


def token_set_ratio(s1: Any, s2: Any) -> int:
    """thefuzz 0.19 ``fuzz.token_set_ratio(s1, s2)`` (force_ascii=True, full_process=True), in [0, 100]."""
    if s1 is None or s2 is None:
        return 0
    return _token_set_processed(full_process(s1), full_process(s2))

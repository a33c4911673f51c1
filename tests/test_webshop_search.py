"""WebShop search: Lucene/Anserini BM25 parity on every fixture query, and the analyzer's pieces."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("nltk")
pytest.importorskip("regex")

from hiper.envs.webshop.data import default_data_dir  # noqa: E402
from hiper.envs.webshop.search import BM25Index, byte4_to_int, int_to_byte4, tokenize  # noqa: E402

pytestmark = pytest.mark.webshop

DATA = default_data_dir()
FIXTURE = DATA / "fixtures" / "search_anserini_bm25_top50.jsonl"



@pytest.fixture(scope="module")
def index(catalogue):
    return BM25Index([p.search_contents() for p in catalogue.products], [p.asin for p in catalogue.products])


def test_small_float_byte4_matches_lucene_table():
    # exact below 24, then 4-bit mantissa floats; values from Lucene's SmallFloat.byte4ToInt
    assert [byte4_to_int(b) for b in (0, 23, 24, 31, 32, 40, 73, 74)] == [0, 23, 24, 31, 32, 40, 312, 344]
    for n in range(0, 5000):
        decoded = byte4_to_int(int_to_byte4(n))
        assert decoded <= n  # lossy, rounds down
        assert int_to_byte4(decoded) == int_to_byte4(n)
    assert int_to_byte4(2**31 - 1) == 255


def test_tokenizer_follows_uax29_and_emits_pictographs():
    assert tokenize("men's 14.125 rx-1400i size:s") == ["men's", "14.125", "rx", "1400i", "size:s"]
    # U+2605 BLACK STAR is Extended_Pictographic (the regex module's property misses it); VS16 stays attached
    assert tokenize("a★b ❤️ 锅巴") == ["a", "★", "b", "❤️", "锅", "巴"]


def test_analyzer_possessive_stop_stem(index):
    assert index.analyzer.analyze("The Women's Running Shoes and a Bag") == ["women", "run", "shoe", "bag"]


def test_top50_equals_anserini_on_all_fixture_queries(catalogue, index):
    if not FIXTURE.is_file():
        pytest.skip(f"fixture {FIXTURE} missing")
    rows = [json.loads(line) for line in FIXTURE.open(encoding="utf-8")]
    assert len(rows) == 2161
    mismatched, worst = [], 0.0
    for row in rows:
        hits = index.search(row["q"])
        ids = [catalogue.products[h.docid].asin for h in hits]
        if ids != row["ids"]:
            mismatched.append(row["q"])
            continue
        worst = max([worst] + [abs(h.score - s) for h, s in zip(hits, row["scores"])])
    assert not mismatched, f"{len(mismatched)} queries differ, e.g. {mismatched[:3]}"
    assert worst < 1e-5


def test_empty_and_stopword_queries_return_nothing(index):
    assert index.search("") == []
    assert index.search("the and of") == []

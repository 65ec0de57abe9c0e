from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REFERENCE, require_reference
from tilde.text import TextProcessor, TokenizerError, expansion_bad_ids, stop_ids


def test_stop_id_rules(vocab_dir: Path) -> None:
    tp = TextProcessor.load(vocab_dir)
    vocab = tp.vocab
    stops = {vocab[i] for i in tp.stop_ids}
    # NLTK words that are single pieces are stops, except question words.
    assert {"the", "a", "of", "is", "and"} <= stops
    assert not {"what", "how", "when", "who", "why", "which"} & stops
    # ##s is a stop; other word pieces are not.
    assert "##s" in stops and "##ing" not in stops
    # punctuation and bracketed specials are stops; plain words are not.
    assert {".", ",", "?", "[CLS]", "[SEP]", "[PAD]", "[unused0]", "'"} <= stops
    assert not {"cat", "dog", "river", "-"} & stops
    bad = {vocab[i] for i in expansion_bad_ids(vocab)}
    # expansion's list keeps no question-word exemption
    assert {"what", "how", "the", "##s", "."} <= bad
    assert "cat" not in bad


def test_query_ids_keep_duplicates_and_drop_stops(vocab_dir: Path) -> None:
    tp = TextProcessor.load(vocab_dir)
    ids = tp.query_ids("The cat and the CAT, what?")
    words = [tp.vocab[i] for i in ids]
    assert words == ["cat", "cat", "what"]


def test_query_limits(vocab_dir: Path) -> None:
    tp = TextProcessor.load(vocab_dir)
    assert tp.query_ids("the of and").size == 0
    with pytest.raises(ValueError, match="limit"):
        tp.query_ids("cat " * 10_000)
    with pytest.raises(TypeError):
        tp.query_ids(42)  # type: ignore[arg-type]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no such file"):
        TextProcessor.load(tmp_path / "missing" / "dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json or vocab.txt"):
        TextProcessor.load(tmp_path / "empty")


def test_vocab_hash_is_format_independent(vocab_dir: Path, tmp_path: Path) -> None:
    a = TextProcessor.load(vocab_dir)
    a.tokenizer.save(str(tmp_path / "tokenizer.json"))
    b = TextProcessor.load(tmp_path / "tokenizer.json")
    assert a.vocab_hash == b.vocab_hash
    assert np.array_equal(a.query_ids("dogs run fast"), b.query_ids("dogs run fast"))


@pytest.mark.data
def test_reference_stop_ids_and_query_ids() -> None:
    ref = require_reference()
    tp = TextProcessor.load(ref / "tiny-tildev2")
    lists = json.loads((ref / "stop_ids.json").read_text())
    assert tp.stop_ids.tolist() == sorted(lists["get_stop_ids"])
    assert sorted(set(lists["indexing_stop_ids_incl_special"])) == tp.stop_ids.tolist()
    assert expansion_bad_ids(tp.vocab).tolist() == sorted(lists["expansion_bad_ids"])
    assert tp.vocab_size - len(stop_ids(tp.vocab)) == 28402
    n = 0
    for line in (REFERENCE / "queries.tokenized.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert tp.token_ids(row["query"]).tolist() == row["token_ids"]
        assert tp.query_ids(row["query"]).tolist() == row["cleaned_token_ids"]
        n += 1
    assert n == 56

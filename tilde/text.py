"""Tokenisation for TILDE/TILDEv2: the fast WordPiece tokenizer, the reference stop-id lists
and query encoding.

Only the ``tokenizers`` package is needed (no transformers), so the query path stays light.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "NLTK_ENGLISH_STOPWORDS",
    "QUESTION_WORDS",
    "TextProcessor",
    "TokenizerError",
    "expansion_bad_ids",
    "load_tokenizer",
    "stop_ids",
    "vocab_hash",
]

# NLTK's English stopword list (179 words), as hard-coded by the reference's tools.get_stop_ids.
# Embedded so that no NLTK data download is ever needed.
NLTK_ENGLISH_STOPWORDS: tuple[str, ...] = tuple(
    """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
    yourselves he him his himself she she's her hers herself it it's its itself they them their
    theirs themselves what which who whom this that that'll these those am is are was were be been
    being have has had having do does did doing a an the and but if or because as until while of at
    by for with about against between into through during before after above below to from up down
    in out on off over under again further then once here there when where why how all any both each
    few more most other some such no nor not only own same so than too very s t can will just don
    don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn
    doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn
    needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't""".split()
)

# TILDEv2 keeps question words at query and index time (they carry intent: "how", "when", ...).
QUESTION_WORDS = frozenset({"how", "what", "when", "where", "which", "who", "why"})

# A non-"##" vocabulary entry that is not plain word characters is punctuation, a symbol or a
# special token: the reference treats all of them as stop ids.
_PLAIN = re.compile(r"^[A-Za-z0-9_-]*$")

# Hard cap on query length in characters: the tokenizer is linear, but an unbounded query is a
# denial-of-service vector in the service, and no real query is this long.
MAX_QUERY_CHARS = 20_000


class TokenizerError(ValueError):
    """A tokenizer could not be loaded or does not fit the index."""


def _vocab_list(tok: Tokenizer) -> list[str]:
    vocab = tok.get_vocab(with_added_tokens=True)
    out = [""] * len(vocab)
    for token, idx in vocab.items():
        if idx >= len(out):
            out.extend([""] * (idx + 1 - len(out)))
        out[idx] = token
    return out


def stop_ids(vocab: list[str]) -> np.ndarray:
    """TILDEv2's stop ids (reference ``tools.get_stop_ids``), sorted int32.

    NLTK stopwords that are single word pieces, minus the question words, plus ``##s``, plus every
    non-``##`` entry that is not ``[A-Za-z0-9_-]*`` (which includes [CLS], [SEP], [PAD], ...).
    """
    index = {t: i for i, t in enumerate(vocab)}
    ids = {index[w] for w in NLTK_ENGLISH_STOPWORDS if w in index and w not in QUESTION_WORDS}
    if "##s" in index:
        ids.add(index["##s"])
    ids.update(i for i, t in enumerate(vocab) if not t.startswith("##") and not _PLAIN.match(t))
    return np.array(sorted(ids), dtype=np.int32)


def expansion_bad_ids(vocab: list[str]) -> np.ndarray:
    """Ids TILDE (v1) never adds as expansion terms (reference ``expansion.clean_vacab``), sorted.

    The full NLTK list (question words included), "definition", ``##s`` and every non-``##``
    entry that is not ``[A-Za-z0-9_-]*``.
    """
    index = {t: i for i, t in enumerate(vocab)}
    words = (*NLTK_ENGLISH_STOPWORDS, "definition", "##s")
    ids = {index[w] for w in words if w in index}
    ids.update(i for i, t in enumerate(vocab) if not t.startswith("##") and not _PLAIN.match(t))
    return np.array(sorted(ids), dtype=np.int32)


def vocab_hash(vocab: list[str]) -> str:
    """sha256 of the vocabulary in id order: identifies a tokenizer independently of its files."""
    # Same digest as hashing token + "\n" one by one, in one call (30k updates cost ~60 ms).
    return hashlib.sha256("".join(t + "\n" for t in vocab).encode("utf-8")).hexdigest()


def _bert_tokenizer_from_vocab(vocab_file: Path, lowercase: bool) -> Tokenizer:
    from tokenizers.implementations import BertWordPieceTokenizer

    return BertWordPieceTokenizer(str(vocab_file), lowercase=lowercase)._tokenizer


def looks_local(name_or_path: str | os.PathLike[str]) -> bool:
    """True when a missing path cannot be a hub id ("org/name" or "name"), so the error should
    say "no such file" instead of trying the network."""
    name = str(name_or_path)
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Tokenizer:
    """Load a fast WordPiece tokenizer from a model directory, a tokenizer.json / vocab.txt file,
    or a Hugging Face hub id. Truncation and padding presets are removed (sentence-transformers
    checkpoints ship ``truncation: 128`` in tokenizer.json, which would silently cut queries)."""
    path = Path(name_or_path)
    tok: Tokenizer
    if path.is_dir():
        lowercase = True
        config = path / "tokenizer_config.json"
        if config.is_file():
            lowercase = bool(json.loads(config.read_text("utf-8")).get("do_lower_case", True))
        if (path / "tokenizer.json").is_file():
            tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        elif (path / "vocab.txt").is_file():
            tok = _bert_tokenizer_from_vocab(path / "vocab.txt", lowercase)
        else:
            raise TokenizerError(f"{path}: no tokenizer.json or vocab.txt in this directory")
    elif path.is_file():
        if path.suffix == ".json":
            tok = Tokenizer.from_file(str(path))
        else:
            tok = _bert_tokenizer_from_vocab(path, lowercase=True)
    elif looks_local(name_or_path):
        raise TokenizerError(f"{name_or_path}: no such file or directory")
    else:
        from tilde.hub import resolve_hub_id  # fail fast when the hub is unreachable

        local = resolve_hub_id(str(name_or_path), "tokenizer")
        if local != str(name_or_path):
            return load_tokenizer(local)
        try:
            tok = Tokenizer.from_pretrained(str(name_or_path))
        except Exception as exc:  # the hub client raises many types; all mean "not loadable"
            raise TokenizerError(
                f"could not load tokenizer {str(name_or_path)!r}: not a local path, and the "
                f"Hugging Face hub did not provide it ({exc.__class__.__name__}: {exc})"
            ) from exc
    tok.no_truncation()
    tok.no_padding()
    return tok


@dataclass(frozen=True)
class TextProcessor:
    """A tokenizer plus the derived TILDE id sets, shared by query encoding and indexing."""

    tokenizer: Tokenizer

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str]) -> TextProcessor:
        return cls(load_tokenizer(name_or_path))

    @cached_property
    def vocab(self) -> list[str]:
        return _vocab_list(self.tokenizer)

    @cached_property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @cached_property
    def vocab_hash(self) -> str:
        return vocab_hash(self.vocab)

    @cached_property
    def stop_ids(self) -> np.ndarray:
        return stop_ids(self.vocab)

    @cached_property
    def _stop_mask(self) -> np.ndarray:
        mask = np.zeros(self.vocab_size, dtype=np.bool_)
        mask[self.stop_ids] = True
        return mask

    def special_id(self, token: str) -> int:
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise TokenizerError(f"tokenizer has no {token} token; a BERT WordPiece vocabulary is required")
        return int(idx)

    def token_ids(self, text: str) -> np.ndarray:
        """WordPiece ids of ``text`` without special tokens (int32)."""
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def query_ids(self, text: str) -> np.ndarray:
        """TILDEv2 query encoding: ids without special tokens, stop ids dropped, duplicates kept
        (a repeated query token counts twice in the score, as in the reference)."""
        if not isinstance(text, str):
            raise TypeError(f"query must be a string, not {type(text).__name__}")
        if len(text) > MAX_QUERY_CHARS:
            raise ValueError(f"query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
        ids = self.token_ids(text)
        return ids[~self._stop_mask[ids]]

    def drop_stop_ids(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return ids[~self._stop_mask[ids]]

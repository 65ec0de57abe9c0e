"""Text analysis for BM25: text -> terms, approximating Anserini's default English analyzer.

Anserini (and so Pyserini and the published MS MARCO / BEIR BM25 figures) analyses text with
Lucene's ``StandardTokenizer`` -> ``EnglishPossessiveFilter`` -> ``LowerCaseFilter`` ->
``StopFilter`` (Lucene's 33-word English set) -> ``PorterStemFilter``. :class:`Analyzer` does the
same steps in Python:

* tokenisation is a regular expression standing in for Unicode word segmentation (UAX #29):
  runs of word characters, kept together across ``' . :`` between letters ("don't", "e.g",
  "results:the") and ``' . , ;`` between digits ("3.14", "1,000"); one token per Han
  ideograph, Hiragana character or emoji; no token of underscores alone;
* possessive ``'s`` is removed, text is lower-cased, the stopwords are dropped;
* stemming is PyStemmer's ``porter`` (the original Porter algorithm, as Lucene's
  ``PorterStemFilter``, which leaves words of one or two characters unstemmed);
  ``english`` (Snowball/Porter2) and ``none`` are the alternatives.

Checked against Anserini's own ``DefaultEnglishAnalyzer`` (through its jar) on DL19 and SciFact
text; the remaining known gap is scripts UAX #29 segments by dictionary (Thai, Lao, ...).

The settings are recorded in the BM25 index manifest, and queries are analysed with the
settings the index was built with.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LUCENE_ENGLISH_STOPWORDS", "STEMMERS", "STOPWORD_SETS", "Analyzer"]

# org.apache.lucene.analysis.en.EnglishAnalyzer.ENGLISH_STOP_WORDS_SET, which Anserini's
# DefaultEnglishAnalyzer uses. Far shorter than NLTK's list: BM25's idf already discounts
# frequent words, and Anserini's published runs keep e.g. "what", "how", "do".
LUCENE_ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with".split()
)
STOPWORD_SETS: Mapping[str, frozenset[str]] = {"lucene": LUCENE_ENGLISH_STOPWORDS, "none": frozenset()}
STEMMERS = ("porter", "english", "none")

# Han ideographs, Hiragana and emoji (Lucene's StandardTokenizer counts (c), (R) and TM among
# them) are one token per character. Any other run of word characters is a token, held together
# as UAX #29 does: across : . ' and the middle dot between letters ("e.g", "results:the",
# "don't"), across . , ; ' between digits ("3.14", "1,000", "2000;284").
_CJK = "\u3040-\u309f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_EMOJI = (  # characters with the Unicode Emoji property (the BMP ones listed, then the emoji planes)
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u231a\u231b\u2328\u23cf\u23e9-\u23f3"
    "\u23f8-\u23fa\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb-\u25fe\u2600-\u2604\u260e\u2611\u2614\u2615\u2618"
    "\u261d\u2620\u2622\u2623\u2626\u262a\u262e\u262f\u2638-\u263a\u2640\u2642\u2648-\u2653\u265f\u2660"
    "\u2663\u2665\u2666\u2668\u267b\u267e\u267f\u2692-\u2697\u2699\u269b\u269c\u26a0\u26a1\u26a7\u26aa"
    "\u26ab\u26b0\u26b1\u26bd\u26be\u26c4\u26c5\u26c8\u26ce\u26cf\u26d1\u26d3\u26d4\u26e9\u26ea\u26f0-\u26f5"
    "\u26f7-\u26fa\u26fd\u2702\u2705\u2708-\u270d\u270f\u2712\u2714\u2716\u271d\u2721\u2728\u2733\u2734"
    "\u2744\u2747\u274c\u274e\u2753-\u2755\u2757\u2763\u2764\u2795-\u2797\u27a1\u27b0\u27bf\u2934\u2935"
    "\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55\u3030\u303d\u3297\u3299\U0001f000-\U0001faff"
)
# Python's \w also matches "other numbers" (superscripts, subscripts, fractions, circled digits),
# which UAX #29 leaves out of words: "km²" is "km" for Lucene.
_NO = "\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u209f\u2150-\u218f\u2460-\u24ff\u2776-\u2793"
# A soft hyphen (a format character) stays inside its word (UAX #29 rule WB4).
_WORD = rf"(?:[^\W{_CJK}{_NO}]|\u00ad)"
_LETTER = rf"[^\W\d_{_CJK}{_NO}]"
_JOIN = rf"(?:(?<={_LETTER})[:.'\u2019\u00b7](?={_LETTER})|(?<=\d)[.,;'\u2019](?=\d))"
_TOKEN = re.compile(rf"[{_CJK}{_EMOJI}]|{_WORD}+(?:{_JOIN}{_WORD}+)*")
# Lucene's EnglishPossessiveFilter drops a token-final 's (after lower-casing here, so 'S too).
_POSSESSIVE = ("'s", "\u2019s", "\uff07s")
# Snowball stemmer objects keep per-call state, so each thread gets its own.
_STEMMERS = threading.local()


def _stemmer(algorithm: str) -> Any:
    stemmer = getattr(_STEMMERS, algorithm, None)
    if stemmer is None:
        try:
            import Stemmer  # PyStemmer: Snowball's C stemmers
        except ImportError:
            raise ImportError(
                f"stemmer {algorithm!r} needs PyStemmer: pip install 'tilde[eval]' (or PyStemmer), "
                "or build the BM25 index with --stemmer none"
            ) from None
        stemmer = Stemmer.Stemmer(algorithm)
        stemmer.maxCacheSize = 100_000  # stems repeat heavily; the cache makes indexing ~2x faster
        setattr(_STEMMERS, algorithm, stemmer)
    return stemmer


# ---------------------------------------------------------------------------------------------
# Lucene's PorterStemmer is Martin Porter's own C/Java code, which departs from the published
# algorithm (Snowball's "porter", which PyStemmer runs) in four places; these fix-ups turn
# Snowball's output into Lucene's. Checked against Lucene's PorterStemmer on the 55,842
# distinct words of the DL19, DL21 and SciFact texts: identical after the fix-ups (165 differed
# before); tests pin a sample.
#  1. words of one or two characters are not stemmed ("us" stays "us", Snowball gives "u");
#  2. step 2 maps -logi to -log (m > 0) ("technology": technolog, Snowball: technologi);
#  3. step 2 maps -bli to -ble (m > 0) where the paper has -abli to -able, and steps 4-5 then
#     run on the -ble word ("possibly": possibl, Snowball: possibli);
#  4. step 1b undoubles any final double consonant but l/s/z after -ed/-ing, where Snowball
#     lists only bb dd ff gg mm nn pp rr tt ("trekked": trek, Snowball: trekk).

_FIXUP_ENDINGS = frozenset("ichjkqvwx")


def _consonant(w: str, i: int) -> bool:
    c = w[i]
    if c in "aeiou":
        return False
    if c == "y":
        return i == 0 or not _consonant(w, i - 1)
    return True


def _measure(w: str) -> int:
    """Porter's m: the number of vowel-consonant sequences in ``w``."""
    n, i, size = 0, 0, len(w)
    while i < size and _consonant(w, i):
        i += 1
    while i < size:
        while i < size and not _consonant(w, i):
            i += 1
        if i >= size:
            break
        while i < size and _consonant(w, i):
            i += 1
        n += 1
    return n


def _cvc(w: str) -> bool:
    i = len(w) - 1
    return i >= 2 and _consonant(w, i) and not _consonant(w, i - 1) and _consonant(w, i - 2) and w[i] not in "wxy"


def _lucene_porter(word: str, stem: str) -> str:
    """Lucene's PorterStemmer output, from a word and Snowball porter's stem of it."""
    if len(word) <= 2:
        return word
    if word.endswith("e"):  # step 1 leaves a final e; only step 5 may drop it (as Snowball does)
        return stem
    if stem.endswith("logi") and _measure(stem[:-4]) > 0:
        return stem[:-1]
    if stem.endswith("bli") and _measure(stem[:-3]) > 0:
        w = stem[:-1] + "e"  # step 2; step 3 has no -ble rule
        if w.endswith(("able", "ible")) and _measure(w[:-4]) > 1:  # step 4
            return w[:-4]
        m = _measure(w[:-1])  # step 5a
        return w[:-1] if m > 1 or (m == 1 and not _cvc(w[:-1])) else w
    if (len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] in _FIXUP_ENDINGS and _consonant(stem, len(stem) - 1)
            and word.endswith(("ed", "ing"))):
        return stem[:-1]
    return stem


@dataclass(frozen=True)
class Analyzer:
    """``Analyzer().terms("The cat's toys")`` -> ``["cat", "toi"]``.

    Frozen, picklable and thread-safe (one stemmer per thread); equality is by settings.
    ``to_dict``/``from_dict`` round-trip through the index manifest.
    """

    stemmer: str = "porter"
    stopwords: str = "lucene"
    lowercase: bool = True
    name: str = field(default="tilde-lucene-like-v1", compare=True)

    def __post_init__(self) -> None:
        if self.stemmer not in STEMMERS:
            raise ValueError(f"stemmer must be one of {STEMMERS}, not {self.stemmer!r}")
        if self.stopwords not in STOPWORD_SETS:
            raise ValueError(f"stopwords must be one of {tuple(STOPWORD_SETS)}, not {self.stopwords!r}")

    def terms(self, text: str) -> list[str]:
        """Analysed terms of ``text``, in order, repeats kept (term frequency matters)."""
        if self.lowercase:
            text = text.lower()
        stop = STOPWORD_SETS[self.stopwords]
        # A run of underscores alone is no token for Lucene (nor is it one for any reader).
        out = [t[:-2] if t[-2:] in _POSSESSIVE else t for t in _TOKEN.findall(text)]
        out = [t for t in out if t not in stop and t.strip("_")]
        if self.stemmer == "none":
            return out
        stemmed: list[str] = _stemmer(self.stemmer).stemWords(out)
        if self.stemmer == "porter":
            stemmed = [s if s[-1:] not in _FIXUP_ENDINGS and len(t) > 2 else _lucene_porter(t, s)
                       for t, s in zip(out, stemmed)]
        return stemmed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Analyzer:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown analyzer settings {unknown}")
        return cls(**dict(data))

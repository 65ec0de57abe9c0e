from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tilde.index.keys import _slow, int_keys, str_keys

ids = st.one_of(
    st.integers(min_value=-5, max_value=10**19),
    st.from_regex(r"\A[0-9]{1,20}\Z"),
    st.text(max_size=6),
)


@settings(deadline=None)
@given(st.lists(ids, max_size=30))
def test_fast_parse_equals_definition(values: list[object]) -> None:
    keys, ok = int_keys(values)
    want_keys, want_ok = _slow(values)
    assert ok.tolist() == want_ok.tolist()
    assert keys[ok].tolist() == want_keys[want_ok].tolist()


def test_canonical_forms_only() -> None:
    keys, ok = int_keys(["0", "7", "007", "", " 7", "7\n", "1" * 18, "1" * 19, "٣", "12a"])
    assert ok.tolist() == [True, True, False, False, False, False, True, False, False, False]
    assert keys[:2].tolist() == [0, 7]


def _str_definition(values: list[object], width: int) -> tuple[list[bytes], list[bool]]:
    keys, ok = [], []
    for v in values:
        e = str(v).encode("utf-8")
        good = len(e) <= width and not e.endswith(b"\x00")
        keys.append(e if good else b"")
        ok.append(good)
    return keys, ok


@settings(deadline=None)
@given(st.lists(st.one_of(st.text(max_size=8), st.integers(0, 10**6)), max_size=30), st.integers(1, 12))
@example(["\n", "00"], 1)  # a newline inside an id: the fallback must start from a clean slate
def test_str_keys_equal_definition(values: list[object], width: int) -> None:
    keys, ok = str_keys(values, width)
    want_keys, want_ok = _str_definition(values, width)
    assert ok.tolist() == want_ok
    assert [k for k, g in zip(keys.tolist(), want_ok) if g] == [k for k, g in zip(want_keys, want_ok) if g]

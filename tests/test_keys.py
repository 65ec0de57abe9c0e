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


def test_numpy_ids_are_the_python_ids() -> None:
    import numpy as np
    import pytest

    want_keys, want_ok = int_keys([4, 5, -1, 10**18])
    for given_ids in (np.array([4, 5, -1, 10**18]), [np.int64(4), np.int32(5), -1, np.uint64(10**18)],
                      [np.int64(4), np.int32(5), np.int8(-1), np.int64(10**18)],
                      np.array(["4", "5", "-1", "1" + "0" * 18])):
        keys, ok = int_keys(given_ids)  # type: ignore[arg-type]
        assert ok.tolist() == want_ok.tolist() and keys[ok].tolist() == want_keys[want_ok].tolist()
    assert int_keys(np.array([4, 5], dtype=np.uint8))[1].tolist() == [True, True]
    assert int_keys(np.array([True, False]))[1].tolist() == [False, False]  # a bool is never an id
    assert int_keys([np.bool_(True), np.int64(3)])[1].tolist() == [False, True]
    assert int_keys(np.array([4.0, 5.5]))[1].tolist() == [False, False]  # nor a float
    assert int_keys(np.array([], dtype=np.int64))[0].size == 0
    with pytest.raises(ValueError, match="1-D"):
        int_keys(np.array([[4, 5]]))
    keys, ok = str_keys(np.array(["a", "bb"]), 4)
    assert ok.tolist() == [True, True] and keys.tolist() == [b"a", b"bb"]
    assert str_keys(np.array([b"a", b"bb"]), 4)[0].tolist() == [b"a", b"bb"]
    assert str_keys(np.array([12, 3]), 4)[0].tolist() == [b"12", b"3"]

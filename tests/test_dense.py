"""The dense part: faiss writes it, numpy maps it, a compiled loop scores it — against faiss'
own decoding and numpy, and texts scored on the fly exactly like their stored copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tilde.index.dense import DenseVectors, dot_rows, write_dense
from tilde.index.format import IndexFormatError

faiss = pytest.importorskip("faiss")


@pytest.mark.parametrize("codec", ["fp16", "sq8"])
def test_dense_part_equals_faiss_and_numpy(tmp_path: Path, codec: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    meta = write_dense(tmp_path / "dense.faiss", x, codec=codec)
    dv = DenseVectors.open(tmp_path, meta, 300)
    ref = faiss.read_index(str(tmp_path / "dense.faiss")).reconstruct_n(0, 300)
    np.testing.assert_allclose(dv.vectors(np.arange(300)), ref, atol=1e-6)  # our decoding is faiss'
    assert np.array_equal(dv.encode(x), np.asarray(dv.codes))  # our encoding is faiss'
    rows = np.array([5, -1, 299, 0, 5, 300], dtype=np.int64)
    q = x[11]
    got = dv.scores(rows, q)
    want = dot_rows(ref[np.clip(rows, 0, 299)], q)
    want[(rows < 0) | (rows >= 300)] = 0.0
    np.testing.assert_allclose(got, want, atol=1e-6)
    # vectors scored on the fly go through the same codec and kernel: bit for bit
    assert np.array_equal(dv.score_vectors(x[[5, 299, 0]], q), got[[0, 2, 3]])


def test_dense_part_refuses_a_mismatch(tmp_path: Path) -> None:
    x = np.ones((4, 8), dtype=np.float32)
    meta = write_dense(tmp_path / "dense.faiss", x)
    with pytest.raises(IndexFormatError, match="does not fit"):
        DenseVectors.open(tmp_path, meta, 5)
    with pytest.raises(IndexFormatError, match="malformed"):
        DenseVectors.open(tmp_path, {**meta, "codec": "pq"}, 4)
    (tmp_path / "dense.faiss").write_bytes(b"short")
    with pytest.raises(IndexFormatError, match="bytes"):
        DenseVectors.open(tmp_path, meta, 4)
    with pytest.raises(ValueError, match="non-finite"):
        write_dense(tmp_path / "bad.faiss", np.full((2, 3), np.nan, dtype=np.float32))

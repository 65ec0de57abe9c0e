"""The ONNX query encoders against their definitions on tiny random models (never a download):
the MLM query vector against a naive torch computation and the SPLADE teacher, the dense vector
against naive mean/CLS pooling, the torch passage encoder against the ONNX one, the error cases,
and that the query path imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from tilde.encoders import DenseQueryEncoder, EncoderConfig, MlmQueryEncoder  # noqa: E402

MAX_LEN = 16  # the tiny bi-encoder's max_seq_length; the MLM encoder keeps the teacher's 64
MLM_LEN = 64
QUERIES = [
    "what is the cat",
    "how fast does a car run on the road",
    "a",
    "Dogs and CATS?",
    "xyzzy qqq",  # word pieces only
    " ".join(["the big red tree in the city"] * 12),  # 84 pieces: truncated by both encoders
]


def _bert_config(vocab_dir: Path, hidden: int = 16):  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    vocab = len((vocab_dir / "vocab.txt").read_text("utf-8").splitlines())
    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)


def _copy_vocab(vocab_dir: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "tokenizer_config.json"):
        (folder / name).write_bytes((vocab_dir / name).read_bytes())


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Path:
    from transformers import BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-mlm")
    _copy_vocab(vocab_dir, folder)
    torch.manual_seed(1)
    BertForMaskedLM(_bert_config(vocab_dir)).save_pretrained(folder)
    return folder


def _sentence_transformer(folder: Path, vocab_dir: Path, pooling: str, normalize: bool, seed: int) -> Path:
    """A sentence-transformers layout written by hand: the model at the root, then Pooling
    (and Normalize) modules, as all-MiniLM-L6-v2 ships."""
    from transformers import BertModel

    _copy_vocab(vocab_dir, folder)
    torch.manual_seed(seed)
    BertModel(_bert_config(vocab_dir, hidden=24)).save_pretrained(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_LEN}), encoding="utf-8")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 24, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_st(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Path:
    return _sentence_transformer(tmp_path_factory.mktemp("tiny-st"), vocab_dir, "mean", True, seed=2)


@pytest.fixture(scope="session")
def mlm_dir(tmp_path_factory: pytest.TempPathFactory, tiny_mlm: Path) -> Path:
    from tilde.encoders.export import export_mlm_query_encoder

    return export_mlm_query_encoder(tiny_mlm, tmp_path_factory.mktemp("enc") / "mlm")


@pytest.fixture(scope="session")
def dense_dir(tmp_path_factory: pytest.TempPathFactory, tiny_st: Path) -> Path:
    from tilde.encoders.export import export_dense_encoder

    return export_dense_encoder(tiny_st, tmp_path_factory.mktemp("enc") / "dense", name="tiny-st")


def _input_ids(model_dir: Path, text: str, max_length: int) -> list[int]:
    from tilde.text import TextProcessor

    tp = TextProcessor.load(model_dir)
    return [tp.special_id("[CLS]"), *tp.token_ids(text)[: max_length - 2].tolist(), tp.special_id("[SEP]")]


def _naive_mlm(model_dir: Path, model: object, text: str, max_length: int) -> np.ndarray:
    """The definition, position by position: max_i log(1 + relu(logits[i]))."""
    ids = torch.tensor([_input_ids(model_dir, text, max_length)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # type: ignore[operator]
    return torch.log1p(torch.relu(logits)).amax(dim=0).numpy()


def _dense(ids: np.ndarray, w: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, dtype=np.float64)
    out[ids] = w
    return out


def test_mlm_encoder_equals_naive_definition(tiny_mlm: Path, mlm_dir: Path) -> None:
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(str(tiny_mlm)).eval()
    enc = MlmQueryEncoder.load(mlm_dir)
    assert enc.max_length == MLM_LEN and enc.config.kind == "mlm" and enc.config.pooling == "max_log1p_relu"
    for q in QUERIES:
        ids, w = enc.encode(q)
        assert ids.dtype == np.int32 and w.dtype == np.float32
        assert np.all(np.diff(ids) > 0) and np.all(w > 0)
        want = _naive_mlm(tiny_mlm, model, q, MLM_LEN)
        assert ids.size > 0
        np.testing.assert_allclose(_dense(ids, w, enc.dim), want, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(enc.encode_vector(q), want, atol=1e-5, rtol=1e-5)


def test_mlm_encoder_equals_splade_teacher(tiny_mlm: Path, mlm_dir: Path) -> None:
    """Same input format and pooling as the repo's SPLADE teacher on queries (its 64-token window)."""
    from tilde.text import TextProcessor
    from tilde.train.prepare import _encode_queries
    from tilde.train.teacher import SpladeTeacher

    vec = _encode_queries(SpladeTeacher(tiny_mlm), TextProcessor.load(tiny_mlm), QUERIES)
    enc = MlmQueryEncoder.load(mlm_dir)
    for i, q in enumerate(QUERIES):
        np.testing.assert_allclose(enc.encode_vector(q), vec.dense(i, enc.dim), atol=1e-5, rtol=1e-5)


def test_mlm_batch_equals_single(mlm_dir: Path) -> None:
    enc = MlmQueryEncoder.load(mlm_dir, threads=2)
    rows = enc.encode_batch(QUERIES)
    assert len(rows) == len(QUERIES)
    for q, (ids, w) in zip(QUERIES, rows):
        np.testing.assert_allclose(_dense(ids, w, enc.dim), enc.encode_vector(q), atol=1e-5, rtol=1e-5)
    assert enc.encode_batch([]) == []


def test_truncation_keeps_first_pieces(mlm_dir: Path, tiny_mlm: Path) -> None:
    from tilde.text import TextProcessor

    enc = MlmQueryEncoder.load(mlm_dir)
    long = QUERIES[-1]
    pieces = TextProcessor.load(tiny_mlm).tokenizer.encode(long, add_special_tokens=False).tokens
    assert len(pieces) > MLM_LEN
    assert len(enc.input_ids(long)) == MLM_LEN
    cut = " ".join(pieces[: MLM_LEN - 2])  # whole words here, so re-tokenising gives the same pieces
    np.testing.assert_array_equal(enc.encode_vector(long), enc.encode_vector(cut))


def _naive_dense(model_dir: Path, texts: list[str], pooling: str, normalize: bool) -> np.ndarray:
    from transformers import BertModel

    model = BertModel.from_pretrained(str(model_dir)).eval()
    out = []
    for t in texts:
        ids = torch.tensor([_input_ids(model_dir, t, MAX_LEN)])
        with torch.no_grad():
            h = model(input_ids=ids).last_hidden_state[0].double()
        v = h.mean(dim=0) if pooling == "mean" else h[0]
        out.append((v / v.norm() if normalize else v).numpy())
    return np.stack(out)


def test_dense_encoder_equals_naive_mean_pool(tiny_st: Path, dense_dir: Path) -> None:
    enc = DenseQueryEncoder.load(dense_dir)
    cfg = enc.config
    assert (cfg.kind, cfg.pooling, cfg.normalize, cfg.dim, cfg.max_length) == ("dense", "mean", True, 24, MAX_LEN)
    assert cfg.source_model == "tiny-st" and len(cfg.source_sha256) == 64
    want = _naive_dense(tiny_st, QUERIES, "mean", True)
    got = enc.encode_batch(QUERIES)
    assert got.dtype == np.float32 and got.shape == (len(QUERIES), 24)
    np.testing.assert_allclose(got, want, atol=1e-5)
    for q, row in zip(QUERIES, want):
        v = enc.encode(q)
        assert v.shape == (24,) and v.dtype == np.float32
        np.testing.assert_allclose(v, row, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_dense_cls_pooling_without_normalize(tmp_path: Path, vocab_dir: Path) -> None:
    from tilde.encoders.export import export_dense_encoder

    st = _sentence_transformer(tmp_path / "st-cls", vocab_dir, "cls", False, seed=3)
    enc = DenseQueryEncoder.load(export_dense_encoder(st, tmp_path / "enc"))
    assert (enc.config.pooling, enc.config.normalize) == ("cls", False)
    np.testing.assert_allclose(enc.encode_batch(QUERIES), _naive_dense(st, QUERIES, "cls", False), atol=1e-5)


def test_dense_passage_encoder_equals_onnx(tiny_st: Path, dense_dir: Path) -> None:
    from tilde.encoders.dense_torch import DensePassageEncoder

    texts = QUERIES + ["the sun and the moon", "money in the bank near the river", "dogs"]
    torch_enc = DensePassageEncoder(tiny_st)
    assert torch_enc.max_length == MAX_LEN and torch_enc.dim == 24
    got = torch_enc.encode(texts, batch_size=2)  # length-sorted batches, rows back in input order
    assert got.dtype == np.float32 and got.shape == (len(texts), 24)
    np.testing.assert_allclose(got, DenseQueryEncoder.load(dense_dir).encode_batch(texts), atol=1e-5)
    np.testing.assert_allclose(got, torch_enc.encode(texts, batch_size=64), atol=1e-5)
    ort_enc = DenseQueryEncoder.load(dense_dir)
    with_empty = [*texts, ""]
    np.testing.assert_allclose(ort_enc.encode_passages(with_empty, batch_size=3),
                               torch_enc.encode(with_empty, batch_size=2), atol=1e-5)
    assert ort_enc.encode_passages([]).shape == (0, 24)
    assert torch_enc.encode([]).shape == (0, 24)
    with pytest.raises(TypeError):
        torch_enc.encode("one string")


def test_int8_export_records_quantization(tmp_path: Path, tiny_st: Path, dense_dir: Path) -> None:
    from tilde.encoders.export import export_dense_encoder

    enc = DenseQueryEncoder.load(export_dense_encoder(tiny_st, tmp_path / "q8", quantize=True))
    assert enc.config.quantization == "int8-dynamic-per-channel"
    ref = DenseQueryEncoder.load(dense_dir).encode_batch(QUERIES)
    got = enc.encode_batch(QUERIES)
    assert np.all((got * ref).sum(axis=1) > 0.9)  # close to float32, not equal


def test_load_errors_name_the_path(tmp_path: Path, mlm_dir: Path, dense_dir: Path) -> None:
    import shutil

    with pytest.raises(FileNotFoundError, match="nowhere"):
        MlmQueryEncoder.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        DenseQueryEncoder.load(tmp_path / "empty")
    with pytest.raises(ValueError, match="'dense' encoder, not 'mlm'"):
        MlmQueryEncoder.load(dense_dir)
    with pytest.raises(ValueError, match="'mlm' encoder, not 'dense'"):
        DenseQueryEncoder.load(mlm_dir)

    bad = tmp_path / "bad"
    shutil.copytree(dense_dir, bad)
    (bad / "encoder.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="damaged encoder config"):
        DenseQueryEncoder.load(bad)
    shutil.copy(dense_dir / "encoder.json", bad / "encoder.json")
    size = (bad / "model.onnx").stat().st_size
    (bad / "model.onnx").write_bytes(b"\x00" * size)  # same size: only ONNX Runtime can tell
    with pytest.raises(ValueError, match="model.onnx"):
        DenseQueryEncoder.load(bad)
    with pytest.raises(ValueError, match="sha256"):
        DenseQueryEncoder.load(bad, verify=True)
    (bad / "model.onnx").write_bytes(b"short")
    with pytest.raises(ValueError, match="damaged"):
        DenseQueryEncoder.load(bad)
    (bad / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="model.onnx"):
        DenseQueryEncoder.load(bad)
    cfg = json.loads((dense_dir / "encoder.json").read_text("utf-8"))
    (bad / "encoder.json").write_text(json.dumps({**cfg, "kind": "sparse"}), encoding="utf-8")
    with pytest.raises(ValueError, match="unknown encoder kind"):
        EncoderConfig.read(bad)
    with pytest.raises(ValueError, match="threads"):
        DenseQueryEncoder.load(dense_dir, threads=0)


def test_bad_queries(mlm_dir: Path, dense_dir: Path) -> None:
    for enc in (MlmQueryEncoder.load(mlm_dir), DenseQueryEncoder.load(dense_dir)):
        for q in ("", "   ", "\t\n"):
            with pytest.raises(ValueError, match="empty query"):
                enc.encode(q)
            with pytest.raises(ValueError, match="empty query"):
                enc.encode_batch(["cats", q])
        with pytest.raises(TypeError):
            enc.encode(None)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            enc.encode_batch("cats")


def test_export_errors(tmp_path: Path, vocab_dir: Path, tiny_mlm: Path, tiny_st: Path) -> None:
    from tilde.encoders.export import export_dense_encoder, export_mlm_query_encoder

    st = _sentence_transformer(tmp_path / "st-max", vocab_dir, "mean", True, seed=4)
    cfg = json.loads((st / "1_Pooling" / "config.json").read_text("utf-8"))
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    (st / "1_Pooling" / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ValueError, match="not supported"):
        export_dense_encoder(st, tmp_path / "out")
    with pytest.raises(ValueError, match="max_length"):
        export_mlm_query_encoder(tiny_mlm, tmp_path / "out", max_length=1000)
    with pytest.raises(FileNotFoundError):
        export_dense_encoder(tmp_path / "missing", tmp_path / "out")
    other = tmp_path / "not-an-encoder"
    other.mkdir()
    (other / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(FileExistsError):
        export_mlm_query_encoder(tiny_mlm, other, max_length=8)
    assert (other / "keep.txt").read_text("utf-8") == "mine"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left


def test_reexport_replaces_encoder(tmp_path: Path, tiny_mlm: Path, mlm_dir: Path) -> None:
    import shutil

    from tilde.encoders.export import export_mlm_query_encoder

    shutil.copytree(mlm_dir, tmp_path / "enc")
    out = export_mlm_query_encoder(tiny_mlm, tmp_path / "enc", max_length=12)
    assert MlmQueryEncoder.load(out).max_length == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "model.onnx", "tokenizer.json"]


def test_query_path_imports_no_torch(mlm_dir: Path, dense_dir: Path) -> None:
    code = (
        "import sys\n"
        "from tilde.encoders import MlmQueryEncoder, DenseQueryEncoder\n"
        f"ids, w = MlmQueryEncoder.load({str(mlm_dir)!r}).encode('cats and dogs')\n"
        f"v = DenseQueryEncoder.load({str(dense_dir)!r}).encode('cats and dogs')\n"
        "assert ids.size and v.size\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules)\n"
        "print('heavy=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "heavy="

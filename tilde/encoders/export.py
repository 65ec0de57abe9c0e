"""Offline export of the query encoders to ONNX (needs torch, transformers, onnx, onnxscript).

Two graphs, both ``input_ids, attention_mask: int64 [batch, length] -> float32``, with dynamic
batch and length, and the same input format (see :mod:`tilde.encoders.spec`):
``[CLS] + wordpiece_ids(text)[: max_length - 2] + [SEP]``, right-padded with ``[PAD]``.

``mlm`` (:func:`export_mlm_query_encoder`): a ``BertForMaskedLM`` (splade-tiny by default) ->
``[batch, vocab]``, the SPLADE query vector ``w[t] = max over real positions i of
log(1 + ReLU(logit[i, t]))`` with the MLM head's logits (bias included), padding excluded, special
tokens included. It equals :class:`tilde.train.teacher.SpladeTeacher` (float32 head) on the input
:func:`tilde.train.prepare._encode_queries` builds, i.e. ``max_length = 64``. (log1p(ReLU(.)) is
monotone, so the graph max-pools the logits first, as the teacher does.)

``dense`` (:func:`export_dense_encoder`): a bi-encoder (a sentence-transformers folder, a plain
transformers folder, or a hub id resolved through the hub cache) -> ``[batch, dim]``, the
model's own pooling: ``mean`` (sum of the real positions' last hidden states over their count,
the count clamped at 1e-9, as sentence-transformers) or ``cls`` (first position), then L2
normalisation (``x / max(||x||, 1e-12)``) when the folder has a Normalize module.

Each output folder holds ``model.onnx``, ``tokenizer.json`` (truncation and padding presets
removed) and ``encoder.json`` (:class:`tilde.encoders.spec.EncoderConfig`); the folder is built
under a temporary name and renamed into place, so a crash never leaves half an encoder. Graph
optimisation is left to ONNX Runtime at session creation (the saved graph stays portable).
``quantize=True`` stores an int8 graph instead (weights per output channel, activations
quantised at run time); ``encoder.json`` records it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, cast

import torch

from tilde.encoders.spec import (
    ENCODER_JSON,
    INT8,
    MLM_QUERY_MAX_LENGTH,
    EncoderConfig,
    read_sentence_transformer,
    sha256_file,
    weights_sha256,
)
from tilde.text import load_tokenizer, looks_local

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_OPSET", "export_dense_encoder", "export_mlm_query_encoder", "resolve_model_dir"]

DEFAULT_OPSET = 17


class _MlmQuery(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = cast(Any, self.model)
        hidden = m.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        logits = m.cls(hidden)
        logits = logits.masked_fill(attention_mask.unsqueeze(-1) == 0, float("-inf"))
        return torch.log1p(torch.relu(logits.amax(dim=1)))


class DensePooled(torch.nn.Module):
    """A transformers encoder + its pooling (+ L2 normalisation): the dense definition, shared
    by the ONNX export and :class:`tilde.encoders.dense_torch.DensePassageEncoder`."""

    def __init__(self, model: torch.nn.Module, pooling: str, normalize: bool) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling {pooling!r} is not supported (mean or cls)")
        self.model, self.pooling, self.normalize = model, pooling, normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = cast(Any, self.model)(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        else:
            vec = hidden[:, 0]
        if self.normalize:
            vec = vec / vec.norm(p=2, dim=1, keepdim=True).clamp(min=1e-12)
        return vec


def resolve_model_dir(model: str | os.PathLike[str]) -> Path:
    """A local folder as is; a hub id through the Hugging Face cache (the usual transformers
    resolution: offline works when the model is cached, or with HF_HUB_OFFLINE=1)."""
    path = Path(model)
    if path.is_dir():
        return path
    if path.exists() or looks_local(model):
        raise FileNotFoundError(f"{model}: no such model directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model)))
    except Exception as exc:  # the hub client raises many types; all mean "not loadable"
        raise FileNotFoundError(f"could not resolve model {str(model)!r}: not a local folder, and the "
                                f"Hugging Face hub did not provide it ({exc.__class__.__name__}: {exc})") from exc


def _export(module: torch.nn.Module, path: Path, opset: int, output: str, fold: bool = True) -> None:
    # The TorchScript exporter: ~10x faster than dynamo=True on these models (0.5 s vs 6 s for a
    # tiny BERT, which keeps the tests fast) and its graph is the one ONNX Runtime's BERT fusions
    # know; the run time measured the same.
    module.eval()
    x = torch.randint(5, 100, (2, 8))
    axes = {0: "batch", 1: "length"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (x, torch.ones_like(x)), str(path), input_names=["input_ids", "attention_mask"],
            output_names=[output], dynamic_axes={"input_ids": axes, "attention_mask": axes, output: {0: "batch"}},
            opset_version=opset, dynamo=False,
            do_constant_folding=fold,
        )


def _quantize(path: Path) -> None:
    """Replace ``path`` by its int8 version: MatMul weights per output channel, activations
    quantised dynamically at run time (ONNX Runtime's ``quantize_dynamic``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = path.with_suffix(".fp32.onnx")
    os.replace(path, fp32)
    root = logging.getLogger()
    was = root.disabled
    root.disabled = True  # quantize_dynamic advises "pre-processing" through the root logger
    try:
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.disabled = was
    fp32.unlink()


def _special_ids(tok: Any, where: Path) -> tuple[int, int, int]:
    """([CLS], [SEP], [PAD]) ids."""
    out = []
    for token in ("[CLS]", "[SEP]", "[PAD]"):
        idx = tok.token_to_id(token)
        if idx is None:
            raise ValueError(f"{where}: tokenizer has no {token} token (a BERT WordPiece tokenizer is required)")
        out.append(int(idx))
    return out[0], out[1], out[2]


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / ENCODER_JSON).is_file())):
        raise FileExistsError(f"{out}: exists and is not an exported encoder; not overwriting it")


def _commit(tmp: Path, out: Path) -> Path:
    """Rename the finished temporary folder to ``out``, replacing an earlier encoder there."""
    _check_target(out)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def _write(out_dir: str | os.PathLike[str], build: Any) -> Path:
    out = Path(out_dir)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would survive the rename
    try:
        cfg: EncoderConfig = build(tmp)
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        cfg = EncoderConfig(**{**cfg.__dict__, "files": files})
        (tmp / ENCODER_JSON).write_text(cfg.to_json(), encoding="utf-8")
        return _commit(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _source_name(model: str | os.PathLike[str], name: str | None) -> str:
    """The caller's name, else the hub id, else the folder's name."""
    if name:
        return name
    return str(model) if not Path(model).exists() else Path(model).resolve().name


def export_mlm_query_encoder(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    max_length: int = MLM_QUERY_MAX_LENGTH,
    opset: int = DEFAULT_OPSET,
    name: str | None = None,
    quantize: bool = False,
) -> Path:
    """Export a ``BertForMaskedLM`` folder as an ``mlm`` query encoder in ``out_dir`` (returned);
    ``name`` is recorded as ``source_model`` (default: the hub id or the folder's name)."""
    from transformers import BertForMaskedLM

    src = resolve_model_dir(model_dir)
    model = BertForMaskedLM.from_pretrained(str(src)).eval()
    positions = int(model.config.max_position_embeddings)
    if not 3 <= max_length <= positions:
        raise ValueError(f"max_length {max_length} is outside 3..{positions} (the model's position embeddings)")
    tok = load_tokenizer(src)
    vocab = int(model.config.vocab_size)
    if tok.get_vocab_size() != vocab:
        raise ValueError(f"{src}: tokenizer has {tok.get_vocab_size()} entries, the MLM head {vocab}")
    cls_id, sep_id, pad_id = _special_ids(tok, src)

    def build(tmp: Path) -> EncoderConfig:
        # Unfolded, the tied decoder stays Transpose(word embeddings) instead of a second 15 MB
        # copy in the file (ONNX Runtime folds it at session creation); the quantiser needs the
        # folded form (it only quantises MatMuls whose weight is an initializer).
        _export(_MlmQuery(model), tmp / "model.onnx", opset, "query_weights", fold=quantize)
        if quantize:
            _quantize(tmp / "model.onnx")
        tok.save(str(tmp / "tokenizer.json"))
        return EncoderConfig(kind="mlm", max_length=max_length, pooling="max_log1p_relu", normalize=False,
                             dim=vocab, source_model=_source_name(model_dir, name),
                             source_sha256=weights_sha256(src), opset=opset, quantization=INT8 if quantize else None,
                             cls_id=cls_id, sep_id=sep_id, pad_id=pad_id)

    return _write(out_dir, build)


def load_dense_model(model_dir: str | os.PathLike[str], max_length: int | None = None) -> tuple[Any, Any, Path]:
    """(DensePooled module in eval mode, its spec, the transformer folder) for a bi-encoder."""
    from transformers import AutoModel

    src = resolve_model_dir(model_dir)
    spec = read_sentence_transformer(src, max_length)
    encoder = AutoModel.from_pretrained(str(spec.transformer_dir)).eval()
    hidden = int(encoder.config.hidden_size)
    if spec.dim is not None and spec.dim != hidden:
        raise ValueError(f"{src}: pooling declares dimension {spec.dim}, the model's hidden size is {hidden}")
    return DensePooled(encoder, spec.pooling, spec.normalize).eval(), spec, src


def export_dense_encoder(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    max_length: int | None = None,
    opset: int = DEFAULT_OPSET,
    name: str | None = None,
    quantize: bool = False,
) -> Path:
    """Export a bi-encoder as a ``dense`` query encoder in ``out_dir`` (returned).
    ``max_length`` defaults to the folder's ``max_seq_length`` (256 for all-MiniLM-L6-v2)."""
    module, spec, src = load_dense_model(model_dir, max_length)
    tok = load_tokenizer(spec.transformer_dir)
    cls_id, sep_id, pad_id = _special_ids(tok, spec.transformer_dir)
    config = cast(Any, module.model).config

    def build(tmp: Path) -> EncoderConfig:
        _export(module, tmp / "model.onnx", opset, "sentence_embedding")
        if quantize:
            _quantize(tmp / "model.onnx")
        tok.save(str(tmp / "tokenizer.json"))
        return EncoderConfig(kind="dense", max_length=spec.max_length, pooling=spec.pooling,
                             normalize=spec.normalize, dim=int(config.hidden_size),
                             source_model=_source_name(model_dir, name),
                             source_sha256=weights_sha256(spec.transformer_dir),
                             opset=opset, quantization=INT8 if quantize else None,
                             cls_id=cls_id, sep_id=sep_id, pad_id=pad_id)

    return _write(out_dir, build)

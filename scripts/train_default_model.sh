#!/usr/bin/env bash
# Train the embedded default model data/default_model: one small bilingual (Chinese + English) LSTM
# mixed with a pruned Kneser-Ney 4-gram, trained on both shared corpora, exported with float16 weights
# to stay small (about 12 MB in all). The committed model is this script's run on a 2-core AVX2 EPYC
# (fp32, both cores, 8 epochs and part of a 9th in the 50 minutes); the budget makes the epochs, and so
# the weights, depend on the machine.
# Usage: scripts/train_default_model.sh [SHARED_DATA_DIR] [WORK_DIR]
set -euo pipefail
data=${1:-../shared/data}
work=${2:-exp/default_model}
if [[ -f data/default_model/model.pt && -z ${FORCE:-} ]]; then
  echo "data/default_model exists; set FORCE=1 to retrain" >&2; exit 0
fi
resume=(); [[ -f $work/train/last.pt ]] && resume=(--resume)
asr-rescore train "$data/zh-rmrb/train.txt" "$data/en-kjv/train.txt" -o "$work" "${resume[@]}" \
  --vocab-size 10000 --embedding-dim 256 --hidden-dim 384 --num-layers 2 --dropout 0.3 --weight-dropout 0 --embedding-dropout 0 --ngram-min-count 3 \
  --max-minutes "${MAX_MINUTES:-50}" --epochs 20 --threads "${THREADS:-0}" --direction forward
python scripts/export_model.py "$work" data/default_model --dtype float16

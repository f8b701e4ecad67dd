#!/usr/bin/env bash
# Train a language model on a corpus: scripts/train.sh CORPUS.txt MODEL_DIR [extra train options]
# Re-running resumes an interrupted run; a finished run is left as it is.
set -euo pipefail
corpus=$1; model_dir=$2; shift 2
if [[ -f "$model_dir/train/last.pt" ]]; then
  echo "resuming the run in $model_dir" >&2
  asr-rescore train "$corpus" -o "$model_dir" --resume "$@"
else
  asr-rescore train "$corpus" -o "$model_dir" "$@"
fi
asr-rescore sample "$model_dir" -n 3 --seed 1

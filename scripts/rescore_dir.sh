#!/usr/bin/env bash
# Rescore every n-best file of a directory: scripts/rescore_dir.sh IN_DIR OUT_DIR MODEL_DIR [WEIGHTS.json] [-- options]
# Files already rescored (the output exists) are skipped, so an interrupted batch re-runs cheaply.
set -euo pipefail
in_dir=$1; out_dir=$2; model_dir=$3; shift 3
weights=()
if [[ $# -gt 0 && $1 != -- ]]; then weights=(--weights "$1"); shift; fi
[[ ${1:-} == -- ]] && shift
mkdir -p "$out_dir"
shopt -s nullglob
for f in "$in_dir"/*.json "$in_dir"/*.jsonl; do
  out="$out_dir/$(basename "$f")"
  if [[ -e $out ]]; then echo "skip $f ($out exists)" >&2; continue; fi
  echo "rescoring $f" >&2
  rescore "$f" -m "$model_dir" "${weights[@]}" -o "$out" --no-progress "$@"
done

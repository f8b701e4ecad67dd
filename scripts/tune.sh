#!/usr/bin/env bash
# Tune the combination weights on a dev set: scripts/tune.sh DEV.nbest.json MODEL_DIR WEIGHTS.json [options]
# Never tune on the set you report: tune on dev, then rescore test with --weights.
set -euo pipefail
dev=$1; model_dir=$2; weights=$3; shift 3
asr-rescore tune "$dev" -m "$model_dir" -o "$weights" "$@"

"""Copy a trained model directory (network, tokenizer, n-gram) without its training state, optionally with float16 weights.

    python scripts/export_model.py exp/zh exported/zh --dtype float16
"""

import argparse
import shutil
from pathlib import Path

import torch

from lm.checkpoint import load_model_dir, save_model_dir

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("source", type=Path)
parser.add_argument("target", type=Path)
parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
args = parser.parse_args()

lm = load_model_dir(args.source)
config = {k: v for k, v in lm.config.items() if k not in ("format_version", "model", "tokenizer_ids")}
config["exported_from"] = str(args.source)
save_model_dir(args.target, lm.model, lm.tokenizer, config, weights_dtype=getattr(torch, args.dtype), ngram=lm.ngram)
if (args.source / "metrics.jsonl").is_file():
    shutil.copyfile(args.source / "metrics.jsonl", args.target / "metrics.jsonl")
print(f"exported {args.source} -> {args.target} ({args.dtype})")

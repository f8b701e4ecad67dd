"""The command line: ``asr-rescore train | perplexity | tune | rescore | evaluate | sample | merge | plot``.

``rescore NBEST`` (its own console script) is the same command as ``asr-rescore rescore``. Each
command only gathers its options and calls one library function; user errors become one line on
stderr with exit code 1 (see :mod:`pipeline.errors`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.errors import UsageError, debug_enabled, reports_errors

app = typer.Typer(
    name="asr-rescore",
    help="Rescore ASR n-best lists with an LSTM language model; train, tune and evaluate it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelOption = Annotated[
    Optional[Path],
    typer.Option("--model", "-m", help="Model directory (config.json, tokenizer.model, model.pt). Default: the embedded model."),
]
ThreadsOption = Annotated[int, typer.Option(help="Intra-op threads per process (1 was fastest on shared 2-core machines).")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]


def print_version(value: bool) -> None:
    if value:
        typer.echo(f"asr-rescore {package_version()}")
        raise typer.Exit()


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asr-rescore")
    except PackageNotFoundError:
        return "unknown (not installed)"


VersionOption = Annotated[
    bool, typer.Option("--version", callback=print_version, is_eager=True, help="Print the version and exit."),
]
DebugOption = Annotated[bool, typer.Option(help="Show tracebacks for errors (also ASR_RESCORE_DEBUG=1).")]


@app.callback()
def configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more detail on stderr.")] = False,
    debug: DebugOption = False,
    version: VersionOption = False,
) -> None:
    """Set up logging once for every command."""
    if debug:
        os.environ["ASR_RESCORE_DEBUG"] = "1"
    setup_logging(verbose)


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose or debug_enabled() else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)


StageBudgetOption = Annotated[Optional[str], typer.Option(help="New texts each stage of the network search (the expanded paths, each pass) may send to the LM, as a fraction of the list's hypotheses, chosen by the n-gram; 'none' for no limit. Bounds the search's cost (default: the weights file's, else 0.1).")]


@app.command()
@reports_errors
def train(
    corpus: Annotated[list[Path], typer.Argument(help="Training text, one sentence per line (UTF-8).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model directory to write.")],
    valid: Annotated[Optional[list[Path]], typer.Option(help="Validation text; default: a held-out fraction of CORPUS.")] = None,
    valid_fraction: Annotated[float, typer.Option(help="Fraction of CORPUS held out when --valid is not given.")] = 0.02,
    exclude: Annotated[Optional[list[Path]], typer.Option(help="Drop these sentences (e.g. evaluation references) from CORPUS.")] = None,
    vocab_size: Annotated[int, typer.Option(help="SentencePiece vocabulary size.")] = 8000,
    model_type: Annotated[str, typer.Option(help="SentencePiece model: unigram, bpe, char or word.")] = "unigram",
    cell: Annotated[str, typer.Option(help="Recurrent cell: lstm, gru or rnn.")] = "lstm",
    embedding_dim: Annotated[int, typer.Option(help="Embedding size; below --hidden-dim, a projection maps the state to it before the tied output layer.")] = 256,
    hidden_dim: Annotated[int, typer.Option(help="Recurrent state size.")] = 512,
    num_layers: Annotated[int, typer.Option(help="Recurrent layers.")] = 1,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout on embeddings and outputs, one mask per sentence (default: 0.4, or 0.5 for a small corpus with 24 epochs in the budget; see the README's Training).")] = None,
    layer_dropout: Annotated[Optional[float], typer.Option(help="Dropout between stacked layers, with --num-layers 2 or more (default: 0.4, or 0.25 for a small corpus with 24 epochs in the budget).")] = None,
    embedding_dropout: Annotated[Optional[float], typer.Option(help="Share of token types dropped from each batch (default: 0, or 0.1 for a small corpus).")] = None,
    weight_dropout: Annotated[Optional[float], typer.Option(help="DropConnect on the recurrent hidden-to-hidden weights (default: 0, or 0.3 for a small corpus).")] = None,
    tie_weights: Annotated[bool, typer.Option(help="Share the embedding with the output layer.")] = True,
    ngram_order: Annotated[int, typer.Option(help="Order of the Kneser-Ney n-gram mixed with the network (0: none).")] = 4,
    ngram_min_count: Annotated[int, typer.Option(help="Drop n-grams of order 2+ seen fewer times (smaller model).")] = 1,
    epochs: Annotated[int, typer.Option(help="Most epochs to train.")] = 40,
    max_minutes: Annotated[float, typer.Option(help="Stop cleanly after this much training time (0: no limit).")] = 50.0,
    batch_tokens: Annotated[int, typer.Option(help="Tokens per batch, padding included (per process under torchrun).")] = 448,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (warm-up, then cosine decay).")] = 3e-3,
    warmup_steps: Annotated[int, typer.Option(help="Steps of linear learning-rate warm-up.")] = 100,
    weight_decay: Annotated[float, typer.Option(help="AdamW's decoupled weight decay (each step shrinks the weights by lr x this).")] = 0.01,
    clip: Annotated[float, typer.Option(help="Gradient-norm clipping threshold (0: off).")] = 1.0,
    patience: Annotated[int, typer.Option(help="Stop after this many epochs without validation improvement.")] = 4,
    average_power: Annotated[float, typer.Option(help="Also validate a moving average of the weights, each step weighted by step^POWER (7: centred a ninth of the run back), and keep it where it validates better; 0: off, the default, as it never won under the cosine decay).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed (recorded in config.json).")] = 1234,
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast where the hardware has it), fp32 or bf16.")] = "auto",
    threads: Annotated[int, typer.Option(help="Intra-op threads (0: torch's default).")] = 0,
    direction: Annotated[str, typer.Option(help="auto: both where the two can train at once (two or more cores, or a GPU), else forward; forward: one left-to-right model; backward: one right-to-left model (for --backward-model); both: a forward model in OUTPUT and a backward one in OUTPUT/backward, which rescoring adds, trained at once (each for --max-minutes) or, on one core, in turn (sharing it).")] = "auto",
    reverse: Annotated[bool, typer.Option(hidden=True, help="Same as --direction backward.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in OUTPUT (with the same options).")] = False,
    keep_checkpoint: Annotated[bool, typer.Option(help="Keep the resumable checkpoint (train/last.pt) after a finished run.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Train a SentencePiece tokenizer and an LSTM language model on CORPUS into a model directory."""
    options = dict(locals())
    from pipeline.train_command import run_train

    run_train(**options)


@app.command()
@reports_errors
def perplexity(
    paths: Annotated[list[Path], typer.Argument(help="[MODEL_DIR] TEXT: a text file, one sentence per line.")],
    model: ModelOption = None,
    direction: Annotated[str, typer.Option(help="forward, backward, both (each sentence's probability is the mean of the two directions'), or auto: both where the model has a backward direction.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    threads: ThreadsOption = 1,
    device: DeviceOption = "cpu",
) -> None:
    """Log-probability and perplexity (per token, character and word) of a text under a model, and of each direction and part."""
    from pipeline.perplexity_command import measure_perplexity

    model_dir, text = split_model_argument(paths, model, "TEXT")
    result = measure_perplexity(model_dir, text, direction, threads, device)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for name, value in result.items():
        if isinstance(value, dict):
            typer.echo(f"{name:>12}  " + ", ".join(f"{k} {v:,.2f}" for k, v in value.items() if k.startswith("ppl_") and v is not None))
        elif value is None:
            typer.echo(f"{name:>12}  - (no spaces: no words)")
        elif isinstance(value, str):
            typer.echo(f"{name:>12}  {value}")
        else:
            typer.echo(f"{name:>12}  {value:,.4f}" if isinstance(value, float) else f"{name:>12}  {value:,}")


ScoreFieldsOption = Annotated[
    Optional[str],
    typer.Option(help="First-pass fields that enter the total, comma-separated, e.g. am_score,lm_score (default: score)."),
]
UnitOption = Annotated[str, typer.Option(help="Length and error unit: auto (char for Chinese, else word), word or char.")]
FormatOption = Annotated[str, typer.Option("--format", help="Input layout: auto, json (ours), kaldi (n-best directory), espnet (decode directory with 1best_recog/), nemo (beams TSV).")]
ReferencesOption = Annotated[Optional[Path], typer.Option(help="References: a Kaldi text file (UTTID words...) or a JSON-lines manifest with 'text' (NeMo: also the ids).")]
BeamSizeOption = Annotated[Optional[int], typer.Option(help="Candidates per utterance of a NeMo beams TSV.")]


def rescore(
    nbest: Annotated[Path, typer.Argument(help="N-best file: canonical JSON, JSON Lines, bare list or mlm dict.")],
    model: ModelOption = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file (default: stdout). Written atomically.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Weights file written by 'asr-rescore tune'.")] = None,
    lm_weight: Annotated[Optional[float], typer.Option(help="Scale of the LM log-probability (overrides --weights).")] = None,
    length_bonus: Annotated[Optional[float], typer.Option(help="Bonus per word/character (overrides --weights).")] = None,
    score_fields: ScoreFieldsOption = None,
    backward_model: Annotated[Optional[Path], typer.Option(help="A right-to-left model to add (default: MODEL_DIR/backward when there is one).")] = None,
    backward_weight: Annotated[Optional[float], typer.Option(help="Scale of the backward LM log-probability (0 leaves it out).")] = None,
    unit: UnitOption = "auto",
    jobs: Annotated[int, typer.Option(help="Worker processes (each loads the model, one thread each).")] = 1,
    shard: Annotated[Optional[str], typer.Option(help="Process only shard K of N (K/N, 1-based): every N-th utterance. Recombine with 'asr-rescore merge'.")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Skip invalid utterances (listed on stderr) instead of stopping.")] = False,
    precision: Annotated[str, typer.Option(help="fp32 (exact) or bf16 (faster, scores move ~1e-2).")] = "fp32",
    batch_tokens: Annotated[int, typer.Option(help="Tokens pooled per LM pass (memory bound).")] = 16384,
    threads: ThreadsOption = 1,
    device: DeviceOption = "cpu",
    progress: Annotated[bool, typer.Option(help="Show progress on stderr.")] = True,
    input_format: FormatOption = "auto",
    references: ReferencesOption = None,
    beam_size: BeamSizeOption = None,
    output_format: Annotated[Optional[str], typer.Option(help="json, jsonl, text (Kaldi: UTTID best text) or trn (sclite: best text (UTTID)); default: from -o's extension, else the input's.")] = None,
    nbest_out: Annotated[Optional[int], typer.Option(help="Keep the best K hypotheses of each utterance, sorted by rank.")] = None,
    posterior_temperature: Annotated[Optional[float], typer.Option(help="Temperature of each hypothesis's posterior (softmax of total_score / T; default 1 or the tuned one).")] = None,
    decision: Annotated[Optional[str], typer.Option(help="How best is chosen: map (the highest total_score) or mbr (the fewest expected errors under the posterior); default: the weights file's, else map.")] = None,
    search: Annotated[Optional[str], typer.Option(help="none, or network: best may be any path of the hypotheses' confusion network (weights from 'tune --search network'); default: the weights file's.")] = None,
    stage_budget: StageBudgetOption = None,
    allow_other_model: Annotated[bool, typer.Option(help="Apply --weights tuned for another model (or with a backward model this run lacks) anyway.")] = False,
    overwrite_input: Annotated[bool, typer.Option(help="Allow -o to name the input file, replacing it with the result.")] = False,
    debug: DebugOption = False,
) -> None:
    """Rescore NBEST with the LM, rerank, and write the result (stdout unless -o).

    Adds lm_logprob, total_score and rank to every hypothesis and best to every utterance. When
    references are present, prints first-pass, rescored and oracle WER/CER on stderr. Other commands:
    asr-rescore train | tune | evaluate | perplexity | sample (see asr-rescore --help).
    """
    options = dict(locals())
    if options.pop("debug"):
        os.environ["ASR_RESCORE_DEBUG"] = "1"
    from pipeline.commands import run_rescore

    run_rescore(**options)


@app.command()
@reports_errors
def tune(
    dev_nbest: Annotated[Path, typer.Argument(help="Dev n-best file with references.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Weights file to write (JSON).")],
    model: ModelOption = None,
    score_fields: Annotated[
        Optional[str],
        typer.Option(help="First-pass fields whose weights are tuned, comma-separated (default: score and every other *_score number the hypotheses carry, e.g. am_score, lm_score)."),
    ] = None,
    backward_model: Annotated[Optional[Path], typer.Option(help="A right-to-left model whose weight is tuned too (default: MODEL_DIR/backward when there is one).")] = None,
    unit: UnitOption = "auto",
    precision: Annotated[str, typer.Option(help="fp32 or bf16.")] = "fp32",
    threads: ThreadsOption = 1,
    device: DeviceOption = "cpu",
    progress: Annotated[bool, typer.Option(help="Show progress on stderr.")] = True,
    input_format: FormatOption = "auto",
    references: ReferencesOption = None,
    beam_size: BeamSizeOption = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw the dev error rate along each weight around the chosen point into this PNG (needs matplotlib: the 'plot' extra).")] = None,
    decision: Annotated[str, typer.Option(help="map, or mbr: also fit the temperature of the minimum-Bayes-risk choice, and record it.")] = "map",
    search: Annotated[str, typer.Option(help="none, or network: also fit the confusion-network search (arc temperature, LM, backward and length weights, and the units the recogniser confuses, mined from the dev lists), and record it.")] = "none",
    stage_budget: StageBudgetOption = None,
) -> None:
    """Search lm_weight, length_bonus (and field and backward weights) minimising WER/CER on a dev set.

    Never tune on the set you will report: tune on dev, then 'rescore --weights W.json' the test set.
    """
    options = dict(locals())
    from pipeline.commands import run_tune

    run_tune(**options)


@app.command()
@reports_errors
def evaluate(
    nbest: Annotated[Path, typer.Argument(help="N-best file with references (rescored or not).")],
    unit: UnitOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    input_format: FormatOption = "auto",
    references: ReferencesOption = None,
    beam_size: BeamSizeOption = None,
    details: Annotated[bool, typer.Option(help="Per utterance: reference, first-pass and rescored text aligned with their errors, and what changed.")] = False,
) -> None:
    """WER/CER of the first pass, the rescored choice and the oracle, with substitutions/insertions/deletions."""
    from pipeline.commands import run_evaluate

    run_evaluate(nbest, unit, as_json, input_format, references, beam_size, details)


@app.command()
@reports_errors
def sample(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="[MODEL_DIR] (or -m; default: the embedded model).")] = None,
    model: ModelOption = None,
    num: Annotated[int, typer.Option("--num", "-n", help="Sentences to draw.")] = 5,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0 gives the greedy sentence.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Draw only from the K most probable tokens (0: all).")] = 0,
    max_tokens: Annotated[int, typer.Option(help="Longest sentence in tokens.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same sentences.")] = 0,
    prefix: Annotated[str, typer.Option(help="Text every sentence starts with.")] = "",
) -> None:
    """Draw sentences from the model token by token (a quick check of what a model has learnt)."""
    from lm.sample import SamplingConfig, sample_sentences
    from pipeline.models import load_model

    if paths and len(paths) > 1:
        raise UsageError(f"expected at most one MODEL_DIR, got {len(paths)}")
    try:
        config = SamplingConfig(num=num, temperature=temperature, top_k=top_k, max_tokens=max_tokens, seed=seed,
                                prefix=prefix)
    except ValueError as e:
        raise UsageError(str(e)) from e
    lm = load_model(paths[0] if paths else model)
    for sentence in sample_sentences(lm, config):
        typer.echo(sentence)


@app.command()
@reports_errors
def merge(
    shards: Annotated[list[Path], typer.Argument(help="Outputs of rescore --shard 1/N .. N/N, in shard order.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Merged file (default: stdout).")] = None,
) -> None:
    """Interleave the outputs of 'rescore --shard K/N' back into the input order."""
    from pipeline.batch import merge_shards

    count = merge_shards(shards, output)
    logging.getLogger(__name__).info("merged %d utterances from %d shards", count, len(shards))


@app.command()
@reports_errors
def plot(
    model: Annotated[Path, typer.Argument(help="A model directory (its metrics.jsonl).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="PNG to write (default: MODEL_DIR/training.png).")] = None,
) -> None:
    """Draw the training curves: validation perplexity (mixture, network alone), training loss, mixture weight, learning rate."""
    from pipeline.plots import plot_training

    output = output or Path(model) / "training.png"
    count = plot_training(model, output)
    logging.getLogger(__name__).info("drew %d validations -> %s", count, output)


app.command(name="rescore")(reports_errors(rescore))

rescore_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
rescore_app.command(help=rescore.__doc__)(reports_errors(rescore))


def split_model_argument(paths: list[Path], model: Path | None, what: str) -> tuple[Path | None, Path]:
    """Accept both ``CMD MODEL_DIR FILE`` and ``CMD -m MODEL_DIR FILE``."""
    if len(paths) == 2 and model is None:
        return paths[0], paths[1]
    if len(paths) == 1:
        return model, paths[0]
    raise UsageError(f"expected [MODEL_DIR] {what} (or -m MODEL_DIR {what}), got {len(paths)} arguments")


def main() -> None:
    """Entry point of the ``asr-rescore`` console script."""
    app()


def rescore_main() -> None:
    """Entry point of the ``rescore`` console script: ``rescore NBEST`` is ``asr-rescore rescore NBEST``."""
    setup_logging()
    rescore_app()

"""PNG pictures for people: training curves from ``metrics.jsonl``, and the dev error rate along each
tuned weight. Needs matplotlib (the ``plot`` extra: ``pip install 'asr-rescore[plot]'``), imported here
only, so the rest of the package never pays for it.
"""

from __future__ import annotations

import math
from pathlib import Path

from lm.metrics_log import kept_loss, perplexity_from_loss, read_metrics
from pipeline.errors import UsageError


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a one-line error saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("plots need matplotlib: pip install 'asr-rescore[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, output: Path) -> None:
    """Write the PNG whole or not at all (a temporary file renamed into place)."""
    from lm.atomic import atomic_write_bytes

    atomic_write_bytes(Path(output), lambda f: figure.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def plot_training(model_dir: Path, output: Path) -> int:
    """Four panels against the training step: validation perplexity (mixture and network), the training
    loss, the network's share in the mixture, the learning rate. Returns the validations drawn."""
    from lm.checkpoint import ModelDirError

    if not (Path(model_dir) / "metrics.jsonl").is_file():
        raise ModelDirError(f"{model_dir}: no metrics.jsonl to draw (is it a model directory written by train?)")
    valid, train = read_metrics(model_dir, "valid"), read_metrics(model_dir, "train")
    if not valid:
        raise ModelDirError(f"{Path(model_dir) / 'metrics.jsonl'}: no validation rows yet")
    plt = pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    steps = [row["step"] for row in valid]
    ppl, net = axes[0][0], axes[0][1]
    ppl.plot(steps, [perplexity_from_loss(r["valid_loss"]) for r in valid], "o-", label="mixture")
    if any("rnn_valid_loss" in r for r in valid):
        ppl.plot(steps, [perplexity_from_loss(r.get("rnn_valid_loss", math.inf)) for r in valid], "s--", label="network alone")
    if any("average_valid_loss" in r for r in valid):
        ppl.plot(steps, [perplexity_from_loss(r.get("average_valid_loss", math.inf)) for r in valid], "^:",
                 label="weight average (mixture)")
    best = [r for r in valid if r.get("best")]
    if best:
        ppl.plot([best[-1]["step"]], [perplexity_from_loss(kept_loss(best[-1]))], "*", markersize=14, label="kept (best)")
    ppl.set(title="validation perplexity per token", yscale="log")
    ppl.legend()
    net.plot([r["step"] for r in train], [r["train_loss"] for r in train], "-", color="tab:orange", label="training")
    net.plot(steps, [r.get("rnn_valid_loss", r["valid_loss"]) for r in valid], "s--", color="tab:blue",
             label="validation")
    net.set(title="the network's loss (nats per token)")
    net.legend()
    axes[1][0].plot(steps, [r.get("rnn_weight", 1.0) for r in valid], "o-", color="tab:green")
    axes[1][0].set(title="network's share in the mixture", xlabel="step", ylim=(0, 1.05))
    lr_rows = sorted(train + valid, key=lambda r: r["step"])
    axes[1][1].plot([r["step"] for r in lr_rows], [r["lr"] for r in lr_rows], "-", color="tab:purple")
    axes[1][1].set(title="learning rate", xlabel="step")
    for axis in axes.flat:
        axis.grid(alpha=0.3)
    figure.suptitle(str(model_dir))
    save(figure, output)
    plt.close(figure)
    return len(valid)


def plot_tuning(curves: dict, metric: str, output: Path) -> None:
    """One panel per tuned weight: the dev error rate along it, the others held at the chosen point."""
    plt = pyplot()
    count = max(len(curves), 1)
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for axis, (name, curve) in zip(axes.flat, curves.items()):
        axis.plot(curve["values"], [100 * r for r in curve["error_rate"]], "-", color="tab:blue")
        axis.axvline(curve["chosen"], color="tab:red", linestyle="--", label=f"chosen {curve['chosen']:.3g}")
        axis.set(title=name, xlabel="weight", ylabel=f"dev {metric} (%)")
        axis.grid(alpha=0.3)
        axis.legend()
    for axis in list(axes.flat)[len(curves):]:
        axis.set_visible(False)
    figure.suptitle(f"dev {metric} along each weight around the tuned point")
    figure.tight_layout()
    save(figure, output)
    plt.close(figure)

"""Test tooling: write canonical utterances in each toolkit's own layout, as the toolkits do.

Used by the format tests and by ``scripts/check_layouts.py``; the readers under test never see this code.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_kaldi(directory: Path, utterances: list[dict], costs: dict[str, str]) -> Path:
    """``words_text`` and one cost file per field: ``costs`` maps a file name (``acwt``) to a field (``am_score``)."""
    directory.mkdir(parents=True, exist_ok=True)
    words, cost_lines = [], {name: [] for name in costs}
    for utterance in utterances:
        for rank, hyp in enumerate(utterance["hypotheses"], 1):
            key = f"{utterance['id']}-{rank}"
            words.append(f"{key} {hyp['text']}".rstrip())
            for name, field in costs.items():
                cost_lines[name].append(f"{key} {-hyp[field]!r}")
    (directory / "words_text").write_text("\n".join(words) + "\n", encoding="utf-8")
    for name, lines in cost_lines.items():
        (directory / name).write_text("\n".join(lines) + "\n")
    return directory


def write_kaldi_text(path: Path, utterances: list[dict]) -> Path:
    """A Kaldi ``text`` file of the references."""
    path.write_text("".join(f"{u['id']} {u['reference']}\n" for u in utterances if "reference" in u), encoding="utf-8")
    return path


def write_espnet(directory: Path, utterances: list[dict], tensor: bool = True) -> Path:
    """``KBest_recog/{text,score}``; an utterance with fewer hypotheses is missing from the higher ranks."""
    depth = max(len(u["hypotheses"]) for u in utterances)
    for rank in range(1, depth + 1):
        folder = directory / f"{rank}best_recog"
        folder.mkdir(parents=True, exist_ok=True)
        texts, scores = [], []
        for utterance in utterances:
            if rank <= len(utterance["hypotheses"]):
                hyp = utterance["hypotheses"][rank - 1]
                texts.append(f"{utterance['id']} {hyp['text']}".rstrip())
                value = repr(hyp["score"])
                scores.append(f"{utterance['id']} tensor({value})" if tensor else f"{utterance['id']} {value}")
        (folder / "text").write_text("\n".join(texts) + "\n", encoding="utf-8")
        (folder / "score").write_text("\n".join(scores) + "\n")
    return directory


def write_nemo(beams: Path, manifest: Path, utterances: list[dict]) -> tuple[Path, Path]:
    """A beams TSV (every utterance padded to the same beam size by repeating its last hypothesis) and a manifest."""
    depth = max(len(u["hypotheses"]) for u in utterances)
    lines = []
    for utterance in utterances:
        hyps = utterance["hypotheses"] + utterance["hypotheses"][-1:] * (depth - len(utterance["hypotheses"]))
        lines += [f"{h['text']}\t{h['score']!r}" for h in hyps]
    beams.write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest.write_text("".join(json.dumps({"audio_filepath": f"/data/wav/{u['id']}.wav", "duration": 1.0,
                                            "text": u.get("reference", "")}, ensure_ascii=False) + "\n"
                                for u in utterances), encoding="utf-8")
    return beams, manifest

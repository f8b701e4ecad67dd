"""pyctcdecode's ``decode_beams`` output as one utterance, in one call (no pyctcdecode import needed).

``decode_beams`` returns, best first, tuples ``(text, lm_state, text_frames, logit_score,
combined_score)`` or, in newer versions, ``OutputBeam`` objects with ``text``, ``logit_score`` and
``lm_score`` (the combined score). Each becomes a hypothesis with ``score`` (the combined score),
``ctc_score`` (the acoustic logit score) and ``lm_score`` (the decoder's LM part, their difference),
so ``tune`` can weigh the decoder's terms.
"""

from __future__ import annotations

from collections.abc import Iterable


def beam_fields(beam) -> tuple[str, float, float]:
    """(text, logit score, combined score) of a tuple or an ``OutputBeam``."""
    if isinstance(beam, (tuple, list)):
        if len(beam) < 5:
            raise ValueError(f"a pyctcdecode beam tuple has 5 items (text, lm_state, text_frames, logit_score, "
                             f"combined_score), got {len(beam)}")
        return beam[0], float(beam[3]), float(beam[4])
    try:
        return beam.text, float(beam.logit_score), float(beam.lm_score)
    except AttributeError as e:
        raise ValueError(f"not a pyctcdecode beam (tuple or OutputBeam): {type(beam).__name__}") from e


def beams_to_utterance(beams: Iterable, utt_id: str, reference: str | None = None) -> dict:
    """One canonical utterance from one ``decode_beams`` result (its order kept: best first)."""
    hypotheses = []
    for beam in beams:
        text, logit, combined = beam_fields(beam)
        text = "" if text is None or text != text else " ".join(str(text).split())  # None or NaN: empty
        hypotheses.append({"text": text, "score": combined, "ctc_score": logit, "lm_score": combined - logit})
    utterance = {"id": utt_id, "hypotheses": hypotheses}
    if reference is not None:
        utterance["reference"] = reference
    return utterance

"""First-pass score fields: each one must be on every hypothesis of a file, or on none.

A field missing from some hypotheses would be read as 0, which outranks every real (negative)
log score and silently picks the wrong hypothesis (NBEST_FORMAT.md). A field missing from all
of them leaves its term out of the ranking, with one note on stderr. Files are checked as they
stream: the first hypothesis seen decides whether the field is expected, and any hypothesis that
disagrees stops the run with an error naming both places.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


class ScoreFieldError(ValueError):
    """A score field on some hypotheses but not on others, or not a number; names the places."""


def is_number(value) -> bool:
    """A JSON number (``true``/``false`` are not numbers, although Python's bool is an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class FieldPresence:
    """Checks that each named field is on all hypotheses or on none, utterance by utterance.

    ``source`` says where the names came from (``--score-fields``, a weights file, the default), for messages.
    """

    def __init__(self, names: Iterable[str], source: str = "the combined score"):
        self.names = list(names)
        self.source = source
        self.present: dict[str, bool] = {}
        self.first_place: dict[str, str] = {}

    def missing_everywhere(self, name: str) -> bool:
        """True once the first hypothesis seen lacked ``name`` (so every hypothesis lacks it)."""
        return self.present.get(name) is False

    def check(self, utterance: dict, where: str = "") -> None:
        """Raise ScoreFieldError if a hypothesis of ``utterance`` disagrees with the first one seen."""
        prefix = f"{where}: " if where else ""
        for index, hyp in enumerate(utterance.get("hypotheses", ()), 1):
            place = f"utterance {utterance.get('id')!r}, hypothesis {index}"
            for name in self.names:
                self.check_one(hyp, name, place, prefix)

    def check_one(self, hyp: dict, name: str, place: str, prefix: str) -> None:
        value = hyp.get(name)
        if name in hyp and not is_number(value):
            raise ScoreFieldError(f"{prefix}{place}: field {name!r} must be a number, got {value!r}")
        has = name in hyp
        expected = self.present.get(name)
        if expected is None:
            self.present[name], self.first_place[name] = has, place
            if not has:
                log.warning("%sno %r on the hypotheses (%s has none): ranking without that term", prefix, name, place)
        elif has != expected:
            first = self.first_place[name]
            if has:
                what = f"has {name!r} but {first} has none"
            else:
                what = f"has no {name!r} but {first} has one"
            raise ScoreFieldError(
                f"{prefix}{place}: {what}; {name!r} (named by {self.source}) must be on every hypothesis or on none"
            )

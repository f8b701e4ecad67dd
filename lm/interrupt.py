"""Ctrl-C during training: a request to stop after the current step, save a checkpoint, and exit."""

from __future__ import annotations

import logging
import signal

from lm.session import Session

log = logging.getLogger(__name__)


class catch_sigint:
    """``with catch_sigint(session)``: SIGINT sets ``session.stop_requested`` instead of raising."""

    def __init__(self, session: Session):
        self.session = session

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self.handle)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def handle(self, signum, frame) -> None:
        self.session.stop_requested = True
        log.warning("interrupted: saving a checkpoint, then stopping (run again with --resume to continue)")

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

"""User errors and how the command line reports them: one line on stderr, exit code 1, no traceback.

Exception classes, by module::

    ValueError
     ├── lm.tokenizer.TokenizerError      tokenizer training or loading failed
     ├── lm.checkpoint.ModelDirError      model directory missing, corrupt, unsafe or inconsistent
     ├── lm.data.CorpusError              corpus file missing, not UTF-8, too small
     ├── pipeline.nbest.NbestFormatError  n-best file missing or malformed (names file, place, field)
     ├── pipeline.fields.ScoreFieldError  a score field on some hypotheses and not on others
     ├── pipeline.errors.WeightsFileError a weights file unreadable, or tuned for another model
     ├── lm.device.DeviceError            a --device or --precision this machine cannot use (exit code 2)
     └── pipeline.errors.UsageError       a bad option value (exit code 2)
    RuntimeError
     └── lm.session.TrainingError         training cannot start or continue

Input problems exit with 1, bad options with 2. Any other exception is a bug: it is reported in one
line too, asking for ``--debug`` (or ``ASR_RESCORE_DEBUG=1``), which shows the traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import typer

from lm.checkpoint import ModelDirError
from lm.data import CorpusError
from lm.device import DeviceError
from lm.session import TrainingError
from lm.tokenizer import TokenizerError
from pipeline.fields import ScoreFieldError
from pipeline.nbest import NbestFormatError

log = logging.getLogger(__name__)

USER_ERRORS = (ModelDirError, CorpusError, TokenizerError, NbestFormatError, TrainingError, ScoreFieldError)


class UsageError(ValueError):
    """An option value that cannot work (reported with exit code 2, like Typer's own usage errors)."""


class WeightsFileError(ValueError):
    """A ``--weights`` file that is missing or not one written by ``asr-rescore tune``."""


def debug_enabled() -> bool:
    return os.environ.get("ASR_RESCORE_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


def reports_errors(command):
    """Decorate a CLI command so that user errors end it with one line on stderr."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except (UsageError, DeviceError) as e:
            if debug_enabled():
                raise
            raise fail(str(e), code=2) from None
        except (*USER_ERRORS, WeightsFileError) as e:
            if debug_enabled():
                raise
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(code=130) from None
        except BrokenPipeError:
            sys.stderr.close()
            raise typer.Exit(code=1) from None
        except OSError as e:  # e.g. -o in a missing folder, or onto a directory
            if debug_enabled():
                raise
            where = e.filename2 or e.filename
            raise fail(f"{where}: {e.strerror or e}" if where else str(e)) from None
        except Exception as e:  # a bug: still one line, and the traceback on request
            if debug_enabled():
                raise
            message = str(e).splitlines()[0][:300] if str(e) else ""
            raise fail(f"internal error ({type(e).__name__}: {message}); run with --debug for the traceback") from None

    return wrapper

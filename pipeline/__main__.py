"""``python -m pipeline`` runs the ``asr-rescore`` command line (torchrun uses this too)."""

from pipeline.cli import main

main()

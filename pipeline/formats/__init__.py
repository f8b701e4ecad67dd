"""Reading the n-best files the speech toolkits write, and writing the transcripts they read.

Readers turn each toolkit's layout (NBEST_FORMAT.md) into canonical utterance dicts, so everything
downstream (rescoring, tuning, evaluation) is the same whatever the recogniser:

- ``kaldi``: a directory of ``nbest-to-linear`` text archives (:mod:`pipeline.formats.kaldi`);
- ``espnet``: an ESPnet2 decode directory with ``1best_recog/`` ... ``Nbest_recog/`` (:mod:`.espnet`);
- ``nemo``: a NeMo beam-search TSV with a JSON-lines manifest (:mod:`.nemo`);
- ``json``: our own JSON, JSON Lines, bare list or mlm dict (:mod:`pipeline.nbest`).

References can come from a separate file for any layout (:mod:`.references`).
"""

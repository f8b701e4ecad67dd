"""Our LM inside torchaudio's CTC beam-search decoder (flashlight-text), and decoder output as n-best lists.

Two ways to use the LM with ``torchaudio.models.decoder.ctc_decoder``:

- shallow fusion: :class:`LstmCtcLM` is a ``CTCDecoderLM`` that the decoder queries for every token (no
  lexicon; the CTC tokens are the LM's SentencePiece pieces) or every word (with a lexicon) it appends;
- rescoring: decode without an LM, turn the n-best lists into utterance dicts with
  :func:`hypotheses_to_utterances` (NBEST_FORMAT.md) and rescore them with ``pipeline.rescore``.

torchaudio and flashlight-text are imported inside functions, so ``import pipeline.audio`` stays cheap;
:class:`LstmCtcLM` is made on first use by a module ``__getattr__``.

How the fused LM keeps state. The decoder identifies a hypothesis's LM context by a ``CTCDecoderLMState``
object and merges hypotheses whose states are the same object; ``state.child(i)`` returns the same child
for the same ``i``, so the states form a prefix tree. Each tree node here gets a :class:`LmNode` that
records its parent and the pieces on the edge, and (computed lazily, when the decoder first scores from
that node) the recurrent state after its history and log P(next piece | history) over the vocabulary.
So each node costs one recurrent step (one step per piece of a word in lexicon mode), and scoring any
number of tokens from it is a list lookup. Those tensors live in a least-recently-used cache of at most
``max_cached_states`` nodes; an evicted node is recomputed from its nearest cached ancestor.

Every state object of the utterance is also a key of ``LstmCtcLM.nodes``. That reference is what keeps
its Python wrapper alive: pybind11 would otherwise make a new wrapper (a new dict key) the next time the
decoder hands the state back (pytorch/audio#3218 is the same pitfall for the LM object itself).
``start()`` clears everything, so memory is bounded per utterance.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lm.checkpoint import LanguageModel
from lm.model import State

if TYPE_CHECKING:  # imported for annotations only: flashlight-text is optional
    from torchaudio.models.decoder import CTCDecoder, CTCHypothesis

log = logging.getLogger(__name__)

BLANK_TOKEN = "-"
SILENCE_TOKEN = "|"
UNK_WORD = "<unk>"
WORD_BOUNDARY = "\u2581"  # SentencePiece's "▁", which starts every word-initial piece


class CtcDecoderUnavailable(RuntimeError):
    """torchaudio's CTC decoder cannot be imported (flashlight-text is missing)."""


def import_ctc_decoder():
    """The ``torchaudio.models.decoder`` module, with a clear error when flashlight-text is missing."""
    try:
        from torchaudio.models import decoder

        decoder.ctc_decoder  # noqa: B018  (torchaudio imports flashlight-text on first attribute access)
    except (ImportError, RuntimeError) as e:
        raise CtcDecoderUnavailable(
            f"torchaudio's CTC decoder needs flashlight-text: pip install 'asr-rescore[ctc]' ({e})"
        ) from e
    return decoder


# ---------------------------------------------------------------------------------------------------
# Token inventories and lexicons


def sentencepiece_tokens(tokenizer, blank_token: str = BLANK_TOKEN, silence_token: str = SILENCE_TOKEN) -> list[str]:
    """The CTC token list of a piece-level acoustic model: blank, silence, then every ordinary piece.

    pad, unk, bos and eos are left out (an acoustic model does not emit them). The decoder needs a
    silence token even when pieces carry word boundaries; it is transparent to the LM.
    """
    pieces = [tokenizer.piece(i) for i in range(tokenizer.vocab_size) if i not in tokenizer.special_ids]
    for name, token in (("blank", blank_token), ("silence", silence_token)):
        if token in pieces:
            raise ValueError(f"the {name} token {token!r} is also a piece of the tokenizer; choose another")
    return [blank_token, silence_token, *pieces]


def sentencepiece_lexicon(tokenizer, words: Iterable[str]) -> dict[str, list[str]]:
    """Spell each word with the pieces the tokenizer gives it (word-initial "▁" included)."""
    words = list(dict.fromkeys(words))
    return {word: [tokenizer.piece(i) for i in ids] for word, ids in zip(words, tokenizer.encode(words))}


def write_lexicon(path: Path, lexicon: dict[str, Sequence[str]]) -> Path:
    """Write a flashlight lexicon file: ``word<TAB>tok tok ...`` per line."""
    lines = [f"{word}\t{' '.join(spelling)}\n" for word, spelling in lexicon.items()]
    Path(path).write_text("".join(lines), encoding="utf-8")
    return Path(path)


def lexicon_words(lexicon_path: Path | str, lm_dict: Path | str | None = None) -> list[str]:
    """The decoder's word list (word index -> word), built exactly as ``ctc_decoder`` builds it."""
    import_ctc_decoder()
    from flashlight.lib.text.dictionary import Dictionary, create_word_dict, load_words

    dictionary = Dictionary(str(lm_dict)) if lm_dict is not None else create_word_dict(load_words(str(lexicon_path)))
    return [dictionary.get_entry(i) for i in range(dictionary.index_size())]


# ---------------------------------------------------------------------------------------------------
# Decoder output -> utterance dicts


def hypothesis_text(
    hypothesis: CTCHypothesis,
    tokens: Sequence[str] | None,
    word_delimiter: str = SILENCE_TOKEN,
    blank_token: str = BLANK_TOKEN,
) -> str:
    """The text of one decoder hypothesis, lower-case words joined by single spaces.

    With ``tokens`` None (or when the hypothesis has words, i.e. a lexicon was used) the words are
    joined. Otherwise the token ids are mapped to ``tokens``: "▁" and ``word_delimiter`` (the silence
    token) become spaces, so SentencePiece pieces and character tokens both read back as words;
    blank and special pieces (``<s>``, ``</s>``, ``<pad>``) are dropped.
    """
    if tokens is None or len(hypothesis.words) > 0:
        return " ".join(word for word in hypothesis.words if word)
    skip = {blank_token, "<s>", "</s>", "<pad>"}
    parts = []
    for index in hypothesis.tokens.tolist():
        token = tokens[index]
        if token == word_delimiter:
            parts.append(" ")
        elif token not in skip:
            parts.append(token.replace(WORD_BOUNDARY, " "))
    return " ".join("".join(parts).split())


def hypotheses_to_utterances(
    results: Sequence[Sequence[CTCHypothesis]],
    tokens: Sequence[str] | None,
    ids: Sequence[str],
    references: Sequence[str] | None = None,
    word_delimiter: str = SILENCE_TOKEN,
    blank_token: str = BLANK_TOKEN,
) -> list[dict]:
    """Turn ``decoder(emissions)`` output into utterance dicts of the canonical n-best format.

    results: one list of hypotheses per utterance (best first), as the decoder returns them;
    tokens: the decoder's token list (None to use ``hyp.words`` only); ids: one id per utterance;
    references: optional true transcripts. Each hypothesis becomes ``{"text", "score"}`` with
    ``score = hyp.score`` (acoustic plus any fused LM, natural log). Hypotheses that read as the same
    text (different alignments or silences) are merged, keeping the best score; the list is best first.
    """
    if len(results) != len(ids):
        raise ValueError(f"got {len(results)} decoder results but {len(ids)} ids")
    if references is not None and len(references) != len(ids):
        raise ValueError(f"got {len(references)} references for {len(ids)} utterances")
    utterances = []
    for index, (hypotheses, utterance_id) in enumerate(zip(results, ids)):
        best: dict[str, float] = {}
        for hypothesis in hypotheses:
            text = hypothesis_text(hypothesis, tokens, word_delimiter, blank_token)
            score = float(hypothesis.score)
            if text not in best or score > best[text]:
                best[text] = score
        ranked = sorted(best.items(), key=lambda item: -item[1])  # stable: decoder order on ties
        utterance: dict[str, Any] = {"id": str(utterance_id)}
        if references is not None:
            utterance["reference"] = references[index]
        utterance["hypotheses"] = [{"text": text, "score": score} for text, score in ranked]
        utterances.append(utterance)
    return utterances


# ---------------------------------------------------------------------------------------------------
# Shallow fusion


class LmNode:
    """What the fused LM knows about one decoder LM state.

    ``pieces``: piece ids read on the edge from ``parent`` (``(bos,)`` at the root, ``()`` for none).
    ``edge_logprob``: log P(pieces | parent's history), once known. ``rnn_state`` and ``next_logprobs``
    (log P(next piece | history) for every piece, a list for fast lookups) are the cached part.
    ``inner_logprob``: the log-probs of the edge's pieces after the first, known once computed.
    ``history``: the last n-1 piece ids read, for a model with an n-gram (kept when the cache is evicted).
    """

    __slots__ = ("state", "parent", "pieces", "edge_logprob", "inner_logprob", "rnn_state", "next_logprobs", "history")

    def __init__(self, state, parent: LmNode | None, pieces: tuple[int, ...]):
        self.state = state
        self.parent = parent
        self.pieces = pieces
        self.edge_logprob: float | None = None
        self.inner_logprob: float | None = None
        self.rnn_state: State | None = None
        self.next_logprobs: list[float] | None = None
        self.history: list[int] | None = None

    @property
    def cached(self) -> bool:
        return self.next_logprobs is not None


@functools.cache
def lstm_ctc_lm_class() -> type:
    """:class:`LstmCtcLM`, defined on first use so that its base class is imported lazily."""
    decoder = import_ctc_decoder()

    class LstmCtcLM(decoder.CTCDecoderLM):
        """Our recurrent LM as a torchaudio ``CTCDecoderLM``; returns natural-log scores.

        Without ``words`` (lexicon-free decoding), ``usr_token_idx`` indexes ``tokens``, the decoder's
        token list: a token that is a piece of the LM's tokenizer scores log P(piece | history);
        any other token (blank, silence, a word delimiter) is transparent (score 0, same state).
        With ``words`` (lexicon decoding), ``usr_token_idx`` indexes ``words``, the decoder's word
        dictionary (see :func:`lexicon_words`), and a word scores the sum of the log-probs of its pieces
        as the tokenizer writes the word inside a sentence ("▁" + word ...). ``finish`` scores ``</s>``.
        The decoder's ``lm_weight`` scales everything returned.
        """

        def __init__(
            self,
            lm: LanguageModel,
            tokens: Sequence[str] | None = None,
            words: Sequence[str] | None = None,
            max_cached_states: int = 4096,
            unk_word: str = UNK_WORD,
        ):
            decoder.CTCDecoderLM.__init__(self)
            if lm.direction != "forward":
                raise ValueError(f"{lm.path}: shallow fusion needs a left-to-right model, this one is {lm.direction}")
            if (tokens is None) == (words is None):
                raise ValueError("give either tokens (lexicon-free decoding) or words (lexicon decoding)")
            if max_cached_states < 1:
                raise ValueError(f"max_cached_states must be positive, got {max_cached_states}")
            self.lm = lm
            self.device = lm.device
            self.model = lm.model.eval()
            self.tokenizer = lm.tokenizer
            self.max_cached_states = max_cached_states
            self.word_level = words is not None
            # Per decoder index: the pieces it reads (empty: transparent).
            if self.word_level:
                self.index_pieces = self.word_pieces(words, unk_word)
            else:
                self.index_pieces = self.token_pieces(tokens)
            self.nodes: dict[Any, LmNode] = {}
            self.cache: OrderedDict[LmNode, None] = OrderedDict()
            self.root: LmNode | None = None
            self.steps = 0  # recurrent steps run since start(), for tests and profiling

        def token_pieces(self, tokens: Sequence[str]) -> list[tuple[int, ...]]:
            processor = self.tokenizer.processor
            special = self.tokenizer.special_ids - {self.tokenizer.unk_id}
            mapping = []
            for token in tokens:
                piece_id = processor.piece_to_id(token)
                real = processor.id_to_piece(piece_id) == token and piece_id not in special
                mapping.append((piece_id,) if real else ())
            if not any(mapping):
                raise ValueError("none of the decoder's tokens is a piece of the LM's tokenizer")
            return mapping

        def word_pieces(self, words: Sequence[str], unk_word: str) -> list[tuple[int, ...]]:
            encoded = self.tokenizer.encode(list(words))
            unk = (self.tokenizer.unk_id,)
            return [unk if word == unk_word or not ids else tuple(ids) for word, ids in zip(words, encoded)]

        # -- the CTCDecoderLM interface ------------------------------------------------------------

        def start(self, start_with_nothing: bool = False):
            """Reset for a new utterance; the root state is after ``<s>``."""
            self.nodes.clear()
            self.cache.clear()
            self.steps = 0
            state = decoder.CTCDecoderLMState()
            self.root = LmNode(state, None, (self.tokenizer.bos_id,))
            self.nodes[state] = self.root
            return state

        def score(self, state, usr_token_idx: int):
            """(next state, log P(token or word | state's history))."""
            pieces = self.index_pieces[usr_token_idx]
            if not pieces:
                return state, 0.0
            parent = self.nodes[state]
            child_state = state.child(usr_token_idx)
            node = self.nodes.get(child_state)
            if node is None:
                node = LmNode(child_state, parent, pieces)
                self.nodes[child_state] = node
            if node.edge_logprob is None:
                node.edge_logprob = self.edge_logprob(node)
            return child_state, node.edge_logprob

        def finish(self, state):
            """(state, log P(</s> | state's history))."""
            node = self.nodes[state]
            return state, self.ensure(node).next_logprobs[self.tokenizer.eos_id]

        # -- the cache -----------------------------------------------------------------------------

        def edge_logprob(self, node: LmNode) -> float:
            first = self.ensure(node.parent).next_logprobs[node.pieces[0]]
            if len(node.pieces) == 1:
                return first
            self.ensure(node)
            return first + node.inner_logprob

        def ensure(self, node: LmNode) -> LmNode:
            """Make sure ``node``'s recurrent state and next-piece log-probs are cached."""
            if node.cached:
                if node is not self.root:
                    self.cache.move_to_end(node)
                return node
            path = []  # uncached nodes from ``node`` up to (excluding) a cached ancestor
            ancestor: LmNode | None = node
            while ancestor is not None and not ancestor.cached:
                path.append(ancestor)
                ancestor = ancestor.parent
            state = ancestor.rnn_state if ancestor is not None else None
            with torch.inference_mode():
                for step in reversed(path):
                    state = self.run_edge(step, state)
            return node

        def run_edge(self, node: LmNode, state: State | None) -> State:
            """Read ``node``'s pieces from the parent's recurrent state and cache the results."""
            x = torch.tensor([node.pieces], dtype=torch.int64, device=self.device)  # (1, k)
            hidden, state = self.model.hidden_states(x, state)  # hidden: (1, k, D)
            logprobs = torch.log_softmax(self.model.output_linear(hidden[0]).float(), dim=-1).cpu()  # (k, V)
            self.steps += len(node.pieces)
            k = len(node.pieces)
            # n-gram histories: the parent's, then each piece of the edge read in turn
            width = self.lm.ngram.history_width if self.lm.ngram is not None else 0
            read = (node.parent.history if node.parent is not None else [-1] * width) + list(node.pieces)
            node.history = read[k:]
            if k > 1:
                inner = logprobs[:-1].gather(1, x[0, 1:, None].cpu())[:, 0]  # (k - 1,): log P(p_j+1 | .., p_j)
                if width:
                    histories = torch.tensor([read[j : j + width] for j in range(1, k)], dtype=torch.int64)
                    inner = self.lm.mix(inner, histories, x[0, 1:].cpu())
                node.inner_logprob = float(inner.double().sum())
            node.rnn_state = state
            node.next_logprobs = self.lm.mix_next(logprobs[-1], node.history).tolist()
            if node is not self.root:
                self.cache[node] = None
                while len(self.cache) > self.max_cached_states:
                    evicted, _ = self.cache.popitem(last=False)
                    evicted.rnn_state = evicted.next_logprobs = None
            return state

        @property
        def num_states(self) -> int:
            """LM states (prefix-tree nodes) created since ``start()``."""
            return len(self.nodes)

    LstmCtcLM.__qualname__ = "LstmCtcLM"
    return LstmCtcLM


def __getattr__(name: str):
    if name == "LstmCtcLM":
        return lstm_ctc_lm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------
# Building the decoder


def build_ctc_decoder(
    tokens: Sequence[str],
    lm: LanguageModel | None = None,
    lexicon: Path | str | dict[str, Sequence[str]] | None = None,
    *,
    nbest: int = 1,
    beam_size: int = 50,
    beam_size_token: int | None = 16,
    beam_threshold: float = 50.0,
    lm_weight: float = 0.5,
    word_score: float = 0.0,
    sil_score: float = 0.0,
    blank_token: str = BLANK_TOKEN,
    sil_token: str = SILENCE_TOKEN,
    unk_word: str = UNK_WORD,
    max_cached_states: int = 4096,
) -> CTCDecoder:
    """A ``ctc_decoder`` over ``tokens``, with our LM fused when ``lm`` is given.

    lexicon: None for lexicon-free decoding (then ``tokens`` should be the LM's pieces, as
    :func:`sentencepiece_tokens` gives them), a lexicon file, or a ``{word: spelling}`` dict (written
    to a temporary file). ``beam_size_token`` bounds the tokens tried per frame (the LM is called from
    Python for each, so keep it small; None tries every token). The fused LM is ``decoder.lm``.
    """
    decoder_module = import_ctc_decoder()
    for name, token in (("blank_token", blank_token), ("sil_token", sil_token)):
        if token not in tokens:
            raise ValueError(f"{name} {token!r} is not in the decoder's token list")
    with tempfile.TemporaryDirectory(prefix="lexicon-") as tmp:
        if isinstance(lexicon, dict):
            lexicon = write_lexicon(Path(tmp) / "lexicon.txt", lexicon)
        fused = None
        if lm is not None:
            words = lexicon_words(lexicon) if lexicon is not None else None
            fused = lstm_ctc_lm_class()(
                lm, tokens=None if words else list(tokens), words=words,
                max_cached_states=max_cached_states, unk_word=unk_word,
            )
        decoder = decoder_module.ctc_decoder(
            lexicon=str(lexicon) if lexicon is not None else None,
            tokens=list(tokens),
            lm=fused,
            nbest=nbest,
            beam_size=beam_size,
            beam_size_token=min(beam_size_token, len(tokens)) if beam_size_token else None,
            beam_threshold=beam_threshold,
            lm_weight=lm_weight if lm is not None else 0.0,
            word_score=word_score,
            sil_score=sil_score,
            blank_token=blank_token,
            sil_token=sil_token,
            unk_word=unk_word,
        )
    if fused is not None and fused.word_level:
        decoder_words = [decoder.word_dict.get_entry(i) for i in range(decoder.word_dict.index_size())]
        assert decoder_words == words, (decoder_words[:10], words[:10])
    return decoder

"""A SentencePiece-style Unigram tokenizer in the XLM-R layout (NFKC, Metaspace, XLM-R's special
token ids and pair template), trained with Hugging Face ``tokenizers`` for the offline scales or
loaded from the hub; saved so that plain ``AutoTokenizer`` loads it.  Details:
``docs/data.md#tokenizer``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
#: Special tokens that take the first ids, in XLM-R order; ``<mask>`` is appended after training.
LEADING_SPECIAL_TOKENS = (BOS, PAD, EOS, UNK)
#: Piece log-probabilities are rounded to this many decimals (see ``_canonical_piece_order``).
SCORE_DECIMALS = 8


def train_unigram_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path | None = None,
    *,
    max_piece_length: int = 16,
    shrinking_factor: float = 0.75,
    n_sub_iterations: int = 2,
    model_max_length: int = 512,
):
    """Train a Unigram tokenizer on ``texts`` and return it as a ``transformers`` fast tokenizer.

    Args:
        texts: training sentences (any iterable; it is read once into memory so that the training is
            repeatable and independent of the iterable's laziness).
        vocab_size: total vocabulary size *including* the five special tokens.  The Unigram trainer may
            stop below it on a tiny corpus (it cannot invent pieces).
        out_dir: if given, ``save_pretrained(out_dir)`` is called.
        max_piece_length, shrinking_factor, n_sub_iterations: Unigram trainer settings (SentencePiece's
            defaults: 16, 0.75, 2).
        model_max_length: recorded in ``tokenizer_config.json`` (XLM-R: 512).

    Reproducibility: the same texts and settings give the same pieces with the same ids (ids follow
    the Unicode order of the pieces, see :func:`_canonical_piece_order`).  The piece *scores* are not
    bit-identical across runs: the ``tokenizers`` Unigram trainer breaks ties between equal-count
    pieces in hash-map order, which can move a score by ~1e-4.  Training runs with ``tokenizers``
    parallelism switched off for the duration of the call.  Save the trained tokenizer and reuse the
    saved directory wherever exact repeatability matters (the pipeline does).
    """
    from transformers import PreTrainedTokenizerFast

    from ..errors import ConfigError

    # Programming errors (the config check catches both first for `veco2` runs).
    texts = [text for text in texts if text]
    if not texts:
        raise ValueError("train_unigram_tokenizer: no non-empty training text")
    if vocab_size <= len(LEADING_SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for pieces after the special tokens")

    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - 1,  # the last id is reserved for <mask>
        special_tokens=list(LEADING_SPECIAL_TOKENS),
        unk_token=UNK,
        shrinking_factor=shrinking_factor,
        max_piece_length=max_piece_length,
        n_sub_iterations=n_sub_iterations,
        show_progress=False,
    )
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    except Exception as err:  # the Rust trainer raises a bare Exception
        if "not large enough to contain all chars" in str(err):
            alphabet = len(set("".join(texts)))
            raise ConfigError(f"data.vocab_size: got {vocab_size}, too small for the {alphabet} distinct "
                              f"characters of the training text (every character needs a piece); "
                              f"raise data.vocab_size") from None
        raise
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    backend = _canonical_piece_order(backend)
    backend.add_special_tokens([MASK])  # XLM-R puts <mask> after every piece

    ids = {token: backend.token_to_id(token) for token in (*LEADING_SPECIAL_TOKENS, MASK)}
    expected = {BOS: 0, PAD: 1, EOS: 2, UNK: 3, MASK: backend.get_vocab_size() - 1}
    if ids != expected:  # a tokenizers release that orders specials differently must not pass silently
        raise RuntimeError(f"special token ids {ids} differ from the XLM-R layout {expected}")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} {EOS} $B {EOS}",
        special_tokens=[(BOS, ids[BOS]), (EOS, ids[EOS])],
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        sep_token=EOS,
        cls_token=BOS,
        unk_token=UNK,
        pad_token=PAD,
        mask_token=MASK,
        model_max_length=model_max_length,
    )
    if out_dir is not None:
        _save_atomically(tokenizer, Path(out_dir))
    return tokenizer


def _save_atomically(tokenizer, out_dir: Path) -> None:
    """``save_pretrained`` into a temporary directory, then move the files into ``out_dir`` with
    ``tokenizer.json`` last: its presence marks a complete tokenizer (``veco2.trainer.prepare_data``
    reuses it), so a run killed half-way through saving never leaves a tokenizer that looks done."""
    import shutil
    import tempfile

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        tokenizer.save_pretrained(str(tmp))
        _portable_tokenizer_class(tmp / "tokenizer_config.json")
        names = sorted(p.name for p in tmp.iterdir())
        for name in sorted(names, key=lambda n: n == "tokenizer.json"):
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _portable_tokenizer_class(config_path: Path) -> None:
    """Name the class ``PreTrainedTokenizerFast`` in ``tokenizer_config.json``.

    transformers 5 writes its internal class name (``TokenizersBackend``), which transformers 4 cannot
    resolve; ``PreTrainedTokenizerFast`` loads ``tokenizer.json`` as-is in both major versions.
    """
    from ..fileio import read_json, write_json

    config = read_json(config_path)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json(config_path, config)


def _canonical_piece_order(backend: Tokenizer) -> Tokenizer:
    """Give the trained pieces ids in Unicode order of the piece text, after the leading special tokens.

    ``tokenizers``' UnigramTrainer keeps pieces in hash maps: pieces with equal counts come out in a
    run-dependent order, and that tie order leaks into the EM re-estimation, so a piece's final score
    can differ between runs on the same corpus (seen: ~1e-4 on a corpus with many equal-count
    characters; the piece *set* was the same in every run we made).  Ordering ids by score, as
    SentencePiece does, would make the ids follow those wobbles; ordering by piece text makes the
    ids a function of the piece set alone.  Nothing reads meaning into a Unigram piece's id (the
    Viterbi segmentation uses scores only).  Scores are rounded to ``SCORE_DECIMALS`` decimals.
    """
    state = json.loads(backend.to_str())
    vocab = state["model"]["vocab"]
    head, rest = vocab[: len(LEADING_SPECIAL_TOKENS)], vocab[len(LEADING_SPECIAL_TOKENS) :]
    if [piece for piece, _ in head] != list(LEADING_SPECIAL_TOKENS):
        raise RuntimeError(f"unexpected leading pieces {head}: the trainer changed its special-token layout")
    rest = sorted([piece, round(score, SCORE_DECIMALS)] for piece, score in rest)
    state["model"]["vocab"] = head + rest
    return Tokenizer.from_str(json.dumps(state))


def load_tokenizer(name_or_path: str | Path):
    """Load a fast tokenizer from a local directory (e.g. one written by :func:`train_unigram_tokenizer`)
    or from the Hugging Face hub by name (e.g. ``xlm-roberta-base``; needs network unless cached).

    A slow (Python) tokenizer is refused: span mining needs character offsets.
    """
    from transformers import AutoTokenizer

    from ..errors import Veco2Error

    path = Path(name_or_path)
    if path.exists() and not path.is_dir():
        raise Veco2Error(f"{path}: a tokenizer must be a directory written by save_pretrained, not a file")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    except OSError as err:
        raise Veco2Error(f"cannot load tokenizer {name_or_path!r}: {str(err).splitlines()[0]}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise Veco2Error(f"tokenizer {name_or_path!r} is not a fast tokenizer (offset mapping is needed)")
    return tokenizer

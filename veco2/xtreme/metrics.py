"""XTREME scorers: accuracy, seqeval entity F1 (NER and UD-POS), SQuAD and MLQA F1 / exact match.

Scale: EVERY metric function in veco2.xtreme (this module and :mod:`veco2.xtreme.retrieval`)
returns PERCENT, 0-100, like the XTREME leaderboard and the official ``evaluate.py`` (which
multiplies scikit-learn / seqeval fractions by 100).  Aggregation (:mod:`veco2.xtreme.aggregate`)
averages these numbers as they are; nothing is rescaled later.

What each scorer reproduces (google-research/xtreme ``evaluate.py`` + ``third_party/``):

- :func:`accuracy` - XNLI, PAWS-X (``sklearn.metrics.accuracy_score * 100``).
- :func:`seqeval_f1` - micro entity F1 over chunks read the way seqeval reads them.  PAN-X is
  scored with it on IOB2 tags; UD-POS is scored with it on *plain UPOS tags* (:func:`pos_f1`),
  which is what the official scorer does.  seqeval reads the first letter of every tag as a
  chunk prefix, so the number is not token accuracy (reported beside it: :func:`token_accuracy`).
- :func:`squad_f1_em` - XQuAD and TyDiQA-GoldP (SQuAD v1.1 ``evaluate-v1.1.py`` for every language).
- :func:`mlqa_f1_em` - MLQA (``mlqa_evaluation_v1.py``, per-language normaliser).

seqeval versions (why ``semantics=`` exists)
--------------------------------------------
XTREME released with seqeval 0.0.12; the installed package is 1.x.  Both flatten sentences
with an ``O`` between them and use the same chunk start/end rules on the first letter of
each tag (``B I E S O`` and ``.`` are special; any other letter behaves like a chunk that
continues while the *type* stays the same).  They differ in how the type is parsed:

=================  ================================  =====================================
tag                0.0.12: ``tag.split('-')[-1]``    >=0.0.13 / 1.x: ``tag[1:].split('-', 1)[-1] or '_'``
=================  ================================  =====================================
``B-PER``          ``PER``                           ``PER``             (IOB2 NER: identical)
``CCONJ``          ``CCONJ``                         ``CONJ``
``SCONJ``          ``SCONJ``                         ``CONJ``            (same type as CCONJ)
``X``              ``X``                             ``_`` (= the type of ``O``)
=================  ================================  =====================================

Consequences on UPOS data: (1) under 1.x ``CCONJ`` and ``SCONJ`` are one type, so e.g.
``CCONJ SCONJ`` gives the single chunk ``(CONJ, 1, 1)`` (the S-prefix restarts the chunk and
the CCONJ token is lost) where 0.0.12 gives two chunks; (2) under 1.x an ``X`` run followed by the end of a sentence (or an ``O``)
never ends, so it is dropped from the chunk set.  On NER IOB/IOB2/IOBES tags both give the
same result (tested against the installed package on random data).  ``semantics="0.0.12"``
(default) gives the XTREME-compatible number; ``semantics="1.x"`` reproduces the installed
package, which the tests use as an independent reference.
"""

from __future__ import annotations

import logging
import re
import string
import unicodedata
from collections import Counter
from typing import Callable, Mapping, Sequence

from veco2.errors import Veco2Error

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    """Percentage of positions where ``predictions[i] == labels[i]`` (0-100).

    Raises :class:`Veco2Error` on empty input or different lengths (a truncated prediction
    file must not score as a shorter, possibly better, run).
    """
    if len(predictions) != len(labels):
        raise Veco2Error(f"accuracy: {len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise Veco2Error("accuracy: no examples to score")
    correct = sum(1 for p, g in zip(predictions, labels) if p == g)
    return 100.0 * correct / len(labels)


# ---------------------------------------------------------------------------------------------
# Sequence labelling: seqeval-style chunking
# ---------------------------------------------------------------------------------------------

SEQEVAL_SEMANTICS = ("0.0.12", "1.x")


def _check_parallel(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], what: str) -> None:
    if len(gold) != len(pred):
        raise Veco2Error(f"{what}: {len(pred)} predicted sentences for {len(gold)} gold sentences")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise Veco2Error(f"{what}: sentence {i} has {len(p)} predicted tags for {len(g)} gold tags")


def _split_tag(tag: str, semantics: str) -> tuple[str, str]:
    """(chunk prefix letter, chunk type) of one tag, as seqeval reads it (prefix style, not suffix)."""
    if not tag:
        raise Veco2Error("seqeval_f1: empty tag string")
    if semantics == "0.0.12":
        return tag[0], tag.split("-")[-1]
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    # seqeval's rules verbatim (identical in 0.0.12 and 1.x).
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(sentences: Sequence[Sequence[str]], *, semantics: str = "0.0.12") -> list[tuple[str, int, int]]:
    """Chunks ``(type, first, last)`` of a list of tagged sentences, positions in the flattened
    sequence where sentences are joined by one ``O`` (as seqeval does, so chunks never cross a
    sentence boundary and positions are unique)."""
    if semantics not in SEQEVAL_SEMANTICS:
        raise Veco2Error(f"seqeval semantics {semantics!r} unknown; use one of {', '.join(SEQEVAL_SEMANTICS)}")
    flat = [tag for sentence in sentences for tag in [*sentence, "O"]]
    chunks = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*flat, "O"]):
        tag, type_ = _split_tag(chunk, semantics)
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def seqeval_f1(gold: list[list[str]], pred: list[list[str]], *, semantics: str = "0.0.12") -> float:
    """Micro entity F1 (percent) over seqeval chunks: ``2PR/(P+R)`` with
    ``P = |gold ∩ pred| / |pred|``, ``R = |gold ∩ pred| / |gold|``; 0 when there is no
    correct chunk (including no chunks at all, as seqeval's ``f1_score`` returns 0).

    Args:
        gold, pred: one list of tags per sentence; same shapes (else :class:`Veco2Error`).
        semantics: ``"0.0.12"`` (XTREME's release-time seqeval, default) or ``"1.x"`` (the
            installed seqeval 1.2.2); see the module docstring for the difference.
    """
    _check_parallel(gold, pred, "seqeval_f1")
    true_chunks = set(get_entities(gold, semantics=semantics))
    pred_chunks = set(get_entities(pred, semantics=semantics))
    correct = len(true_chunks & pred_chunks)
    if correct == 0:
        return 0.0
    precision = correct / len(pred_chunks)
    recall = correct / len(true_chunks)
    return 100.0 * 2 * precision * recall / (precision + recall)


def pos_f1(gold: list[list[str]], pred: list[list[str]]) -> float:
    """UD-POS score as XTREME reports it: :func:`seqeval_f1` with 0.0.12 semantics over plain
    UPOS tags (runs of one tag merge into a chunk; SCONJ/SYM are single-token chunks).  Not
    token accuracy; report :func:`token_accuracy` beside it, labelled."""
    return seqeval_f1(gold, pred, semantics="0.0.12")


def token_accuracy(gold: list[list[str]], pred: list[list[str]]) -> float:
    """Plain per-token tag accuracy (percent) over all sentences."""
    _check_parallel(gold, pred, "token_accuracy")
    return accuracy([t for s in pred for t in s], [t for s in gold for t in s])


# ---------------------------------------------------------------------------------------------
# Extractive QA: SQuAD v1.1 (XQuAD, TyDiQA-GoldP) and MLQA
# ---------------------------------------------------------------------------------------------

_SQUAD_PUNCT = frozenset(string.punctuation)
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize(text: str) -> str:
    """SQuAD v1.1 ``normalize_answer``: lower-case, drop ASCII punctuation, replace the
    English articles a/an/the (whole words) by a space, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _SQUAD_PUNCT)
    text = _SQUAD_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _qa_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    normalize: Callable[[str], str],
    what: str,
) -> dict[str, float]:
    """F1 / EM in percent, max over the gold answers of each question, averaged over ALL
    reference questions.  A question without a prediction scores 0 (as the official scripts
    do), with a logged count; predictions for unknown ids are ignored, also logged."""
    if not references:
        raise Veco2Error(f"{what}: no reference questions to score")
    f1_total = em_total = 0.0
    unanswered = 0
    for qid, answers in references.items():
        if isinstance(answers, str):
            raise Veco2Error(f"{what}: references[{qid!r}] must be a list of answer strings, not a string")
        if not answers:
            raise Veco2Error(f"{what}: question {qid!r} has no gold answer")
        if qid not in predictions:
            unanswered += 1
            continue
        pred_norm = normalize(predictions[qid])
        gold_norms = [normalize(a) for a in answers]
        em_total += max(float(pred_norm == g) for g in gold_norms)
        f1_total += max(_token_f1(pred_norm.split(), g.split()) for g in gold_norms)
    if unanswered:
        log.warning("%s: %d of %d questions have no prediction and score 0", what, unanswered, len(references))
    extra = len(set(predictions) - set(references))
    if extra:
        log.warning("%s: %d predictions for question ids not in the references were ignored", what, extra)
    n = len(references)
    return {"f1": 100.0 * f1_total / n, "exact_match": 100.0 * em_total / n}


def squad_f1_em(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1 F1 and exact match (percent), ``{"f1", "exact_match"}``.

    Args:
        predictions: question id -> predicted answer text.
        references: question id -> list of gold answer texts (max over them per question).

    Raises:
        Veco2Error: ``references`` is empty (``squad_f1_em: no reference questions to score``;
            the official ``evaluate-v1.1.py`` computes ``100.0 * f1 / total`` and crashes with
            ZeroDivisionError), a question has no gold answer, or its answers are a bare string.
            Missing predictions are not an error: they score 0, with a logged count.
    """
    return _qa_scores(predictions, references, squad_normalize, "squad_f1_em")


# MLQA normaliser (facebookresearch/MLQA mlqa_evaluation_v1.py), reconstructed from the script.
# PUNCT there is every code point whose Unicode category starts with "P", plus string.punctuation
# (which adds the ASCII symbols $ + < = > ^ ` | ~ that are category S).
MLQA_LANGUAGES = ("en", "es", "de", "ar", "hi", "vi", "zh")


def _is_mlqa_punct(ch: str) -> bool:
    # Same set as the script's PUNCT, tested per character instead of building a 1.1M-entry set.
    return ch in _SQUAD_PUNCT or unicodedata.category(ch).startswith("P")

_MLQA_ARTICLES = {
    "en": re.compile(r"\b(a|an|the)\b"),
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    # The script's pattern is '\sال^|ال'; its first branch can never match ('^' after a
    # character), so in effect EVERY occurrence of "ال" - not only the word-initial article -
    # is replaced by a space.  Kept as is: published MLQA numbers were computed this way.
    "ar": re.compile("\u0627\u0644"),
}
_MIXED_SEGMENTATION_LANGUAGES = ("zh",)
_CJK = re.compile(r"[\u4e00-\u9fa5]")  # the script's range (CJK Unified Ideographs, basic block)


def _mixed_segmentation(text: str) -> list[str]:
    """Every CJK ideograph (and punctuation character) is its own token; the text between
    them is split on whitespace."""
    tokens: list[str] = []
    pending = ""
    for ch in text:
        if _CJK.match(ch) or _is_mlqa_punct(ch):
            tokens.extend(pending.split())
            pending = ""
            tokens.append(ch)
        else:
            pending += ch
    tokens.extend(pending.split())
    return tokens


def mlqa_normalize(text: str, lang: str) -> str:
    """MLQA ``normalize_answer(s, lang)``: lower-case; drop every Unicode punctuation
    character; replace the language's articles by a space (en a/an/the; es un una unos unas
    el la los las; de ein eine einen einem eines einer der die das den dem des; vi của là cái
    chiếc những; ar every "ال"; hi, zh none); tokenise (zh: each CJK character a token, else
    whitespace) and join the tokens with single spaces."""
    if lang not in MLQA_LANGUAGES:
        raise Veco2Error(f"mlqa_normalize: language {lang!r} unknown to the MLQA scorer; known: {' '.join(MLQA_LANGUAGES)}")
    text = "".join(ch for ch in text.lower() if not _is_mlqa_punct(ch))
    if lang in _MLQA_ARTICLES:
        text = _MLQA_ARTICLES[lang].sub(" ", text)
    tokens = _mixed_segmentation(text) if lang in _MIXED_SEGMENTATION_LANGUAGES else text.split()
    return " ".join(t for t in tokens if t.strip())


def mlqa_f1_em(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], lang: str
) -> dict[str, float]:
    """MLQA F1 and exact match (percent) for one language (context language = question
    language), ``{"f1", "exact_match"}``; inputs as in :func:`squad_f1_em`.

    Raises:
        Veco2Error: ``lang`` is not one of :data:`MLQA_LANGUAGES` (``mlqa_f1_em: language 'fr'
            unknown to the MLQA scorer; known: en es de ar hi vi zh``), checked before anything
            is scored (the official ``mlqa_evaluation_v1.py``, facebookresearch/MLQA commit
            5ef5c731, raises a bare ``Exception('Unknown Language ...')`` only once it normalises
            a first answer, so a run without predictions passes silently); or any
            :func:`squad_f1_em` input error, e.g. no reference questions (the official script
            divides by the question count: ZeroDivisionError).
    """
    if lang not in MLQA_LANGUAGES:
        raise Veco2Error(f"mlqa_f1_em: language {lang!r} unknown to the MLQA scorer; known: {' '.join(MLQA_LANGUAGES)}")
    return _qa_scores(predictions, references, lambda s: mlqa_normalize(s, lang), f"mlqa_f1_em[{lang}]")


# ---------------------------------------------------------------------------------------------
# Registry: metric names used by the task registry -> scoring function
# ---------------------------------------------------------------------------------------------


def _bucc_f1(*args, **kwargs):
    from veco2.xtreme.retrieval import bucc_f1  # lazy: retrieval imports torch

    return bucc_f1(*args, **kwargs)


def _tatoeba_accuracy(*args, **kwargs):
    from veco2.xtreme.retrieval import tatoeba_accuracy

    return tatoeba_accuracy(*args, **kwargs)


_bucc_f1.__doc__ = "Lazy alias of :func:`veco2.xtreme.retrieval.bucc_f1`."
_tatoeba_accuracy.__doc__ = "Lazy alias of :func:`veco2.xtreme.retrieval.tatoeba_accuracy`."

METRICS: dict[str, Callable] = {
    "accuracy": accuracy,
    "seqeval_f1": seqeval_f1,
    "pos_f1": pos_f1,
    "token_accuracy": token_accuracy,
    "squad_f1_em": squad_f1_em,
    "mlqa_f1_em": mlqa_f1_em,
    "bucc_f1": _bucc_f1,
    "tatoeba_accuracy": _tatoeba_accuracy,
}

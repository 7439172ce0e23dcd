"""XTREME scorers: accuracy, seqeval entity F1 (NER and UD-POS), SQuAD and MLQA F1 / exact match.

Every metric function in veco2.xtreme (this module and :mod:`veco2.xtreme.retrieval`) returns
PERCENT, 0-100, like the official google-research/xtreme ``evaluate.py`` and ``third_party/``
scorers the functions reproduce.  ``semantics="0.0.12"`` (default) reads tags as seqeval 0.0.12
(XTREME's) does, ``"1.x"`` as the installed seqeval.  What each scorer reproduces and how the
seqeval versions differ: ``docs/xtreme.md#metrics``.
"""

from __future__ import annotations

import logging
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

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
            installed seqeval 1.2.2); see docs/xtreme.md#metrics for the difference.
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


def _qa_per_question(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    normalize: Callable[[str], str],
    what: str,
) -> tuple[list[float], list[float]]:
    """F1 and EM (0-1) of every reference question, in the order of ``references``, max over its
    gold answers; a question without a prediction scores 0 (as the official scripts do), with a
    logged count; predictions for unknown ids are ignored, also logged."""
    if not references:
        raise Veco2Error(f"{what}: no reference questions to score")
    f1s, ems = [], []
    unanswered = 0
    for qid, answers in references.items():
        if isinstance(answers, str):
            raise Veco2Error(f"{what}: references[{qid!r}] must be a list of answer strings, not a string")
        if not answers:
            raise Veco2Error(f"{what}: question {qid!r} has no gold answer")
        if qid not in predictions:
            unanswered += 1
            f1s.append(0.0)
            ems.append(0.0)
            continue
        pred_norm = normalize(predictions[qid])
        gold_norms = [normalize(a) for a in answers]
        ems.append(max(float(pred_norm == g) for g in gold_norms))
        f1s.append(max(_token_f1(pred_norm.split(), g.split()) for g in gold_norms))
    if unanswered:
        log.warning("%s: %d of %d questions have no prediction and score 0", what, unanswered, len(references))
    extra = len(set(predictions) - set(references))
    if extra:
        log.warning("%s: %d predictions for question ids not in the references were ignored", what, extra)
    return f1s, ems


def _qa_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    normalize: Callable[[str], str],
    what: str,
) -> dict[str, float]:
    """F1 / EM in percent, max over the gold answers of each question, averaged over ALL
    reference questions (:func:`_qa_per_question`)."""
    f1s, ems = _qa_per_question(predictions, references, normalize, what)
    n = len(references)
    return {"f1": 100.0 * sum(f1s) / n, "exact_match": 100.0 * sum(ems) / n}


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


# ---------------------------------------------------------------------------------------------
# Per-example statistics: what the paired bootstrap resamples
# ---------------------------------------------------------------------------------------------


@dataclass
class ExampleStatistics:
    """Per-example sufficient statistics of one language's scores: the score of any resample of the
    examples is a function of the summed rows (:meth:`score`), so a bootstrap never re-runs a scorer.

    ``kind="mean"``: each column is a per-example value in [0, 1] (correct or not, a question's F1)
    and its score is ``100 · mean``.  ``kind="f1"``: the columns are ``tp``, ``pred``, ``gold``
    counts per unit (a sentence's chunks, a BUCC source sentence's pairs) and the score, named
    ``metric``, is micro F1 ``100 · 2 tp / (pred + gold)`` (0 without a true positive), the formula
    :func:`seqeval_f1` and ``bucc_f1`` compute on the whole set.
    """

    kind: str
    columns: list[str]
    rows: np.ndarray
    metric: str = "f1"

    def score(self, sums: np.ndarray | None = None, count: int | None = None) -> dict[str, float]:
        """The scores of the examples whose summed rows are ``sums`` (default: all of them)."""
        sums = self.rows.sum(axis=0) if sums is None else sums
        return dict(zip(self.score_names(), self.score_columns(np.asarray(sums, dtype=np.float64)[None],
                                                                count or len(self.rows))[0]))

    def score_names(self) -> list[str]:
        return list(self.columns) if self.kind == "mean" else [self.metric]

    def score_columns(self, sums: np.ndarray, count: int) -> np.ndarray:
        """Scores ``[R, len(score_names())]`` of ``R`` resamples given their summed rows ``[R, k]``."""
        if self.kind == "mean":
            return 100.0 * sums / count
        tp, pred, gold = sums[:, 0], sums[:, 1], sums[:, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(tp > 0, 200.0 * tp / (pred + gold), 0.0)
        return f1[:, None]

    def to_json(self) -> dict:
        return {"kind": self.kind, "columns": list(self.columns), "metric": self.metric,
                "rows": self.rows.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "ExampleStatistics":
        rows = np.asarray(data["rows"], dtype=np.float64).reshape(-1, len(data["columns"]))
        return cls(data["kind"], list(data["columns"]), rows, data.get("metric", "f1"))


def accuracy_statistics(predictions: Sequence, labels: Sequence, name: str = "accuracy") -> ExampleStatistics:
    """One row per example: 1 if ``predictions[i] == labels[i]`` (the rows of :func:`accuracy`)."""
    if len(predictions) != len(labels):
        raise Veco2Error(f"accuracy: {len(predictions)} predictions for {len(labels)} labels")
    rows = np.array([[float(p == g)] for p, g in zip(predictions, labels)], dtype=np.float64).reshape(-1, 1)
    return ExampleStatistics("mean", [name], rows)


def chunk_statistics(gold: list[list[str]], pred: list[list[str]], *, semantics: str = "0.0.12",
                     name: str = "f1") -> ExampleStatistics:
    """One row per sentence: its correct, predicted and gold seqeval chunks (the counts
    :func:`seqeval_f1` sums; chunks never cross a sentence)."""
    _check_parallel(gold, pred, "chunk_statistics")
    rows = []
    for gold_sentence, pred_sentence in zip(gold, pred):
        true_chunks = set(get_entities([gold_sentence], semantics=semantics))
        pred_chunks = set(get_entities([pred_sentence], semantics=semantics))
        rows.append([len(true_chunks & pred_chunks), len(pred_chunks), len(true_chunks)])
    return ExampleStatistics("f1", ["tp", "pred", "gold"], np.asarray(rows, dtype=np.float64).reshape(-1, 3), name)


def qa_statistics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                  lang: str | None = None) -> ExampleStatistics:
    """One row per reference question: its F1 and EM (0-1), with the MLQA normaliser of ``lang``
    when given, else SQuAD's (the rows :func:`squad_f1_em` / :func:`mlqa_f1_em` average)."""
    if lang is None:
        f1s, ems = _qa_per_question(predictions, references, squad_normalize, "squad_f1_em")
    else:
        if lang not in MLQA_LANGUAGES:
            raise Veco2Error(f"mlqa_f1_em: language {lang!r} unknown to the MLQA scorer; "
                             f"known: {' '.join(MLQA_LANGUAGES)}")
        f1s, ems = _qa_per_question(predictions, references, lambda s: mlqa_normalize(s, lang), f"mlqa_f1_em[{lang}]")
    return ExampleStatistics("mean", ["f1", "exact_match"], np.column_stack([f1s, ems]).astype(np.float64))

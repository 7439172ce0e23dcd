"""Sentence retrieval for XTREME: exact chunked cosine k-NN, Tatoeba accuracy, BUCC 2018 mining.

Accuracies and F1 values are PERCENT (0-100); similarities, margins and thresholds are raw.
:func:`knn` never builds the full similarity matrix and breaks exact ties towards the lowest key
index (faiss is opt-in).  Tatoeba is scored in XTREME's direction (English queries), BUCC mined as
XTREME calls LASER's ``mine_bitexts.py`` (google-research/xtreme ``third_party/evaluate_retrieval.py``
commit 68ff4bec, ``third_party/utils_retrieve.py`` commit 4940374c).  Memory, ties and both
protocols: ``docs/xtreme.md#retrieval``.
"""

from __future__ import annotations

import logging
from typing import Hashable, Iterable, Sequence

import numpy as np
import torch

from veco2.errors import Veco2Error

log = logging.getLogger(__name__)

Candidate = tuple[Hashable, Hashable, float]  # (src_id, tgt_id, margin score)


# ---------------------------------------------------------------------------------------------
# Exact cosine k-NN in bounded memory
# ---------------------------------------------------------------------------------------------


def _as_tensor(x, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(dtype)
    if t.ndim != 2:
        raise Veco2Error(f"{name}: expected a 2-d array [n, dim], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise Veco2Error(f"{name}: contains NaN or infinite values")
    return t


def l2_normalize(x, eps: float = 1e-12):
    """Rows divided by their L2 norm (norm clamped at ``eps``, so a zero row stays zero and
    has cosine 0 with everything).  Returns the same kind of array it was given."""
    if isinstance(x, torch.Tensor):
        return torch.nn.functional.normalize(x, p=2.0, dim=-1, eps=eps)
    x = np.asarray(x)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


def _topk_lowest_index(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row of ``sims`` ordered by (value descending, column ascending)."""
    # One extra neighbour tells whether the k-th value is tied with a value outside the top-k;
    # only then may topk have picked the wrong tied columns.  Those rows (rare outside
    # hand-made data) get an exact stable sort.
    extra = min(k + 1, sims.shape[1])
    values, indices = torch.topk(sims, extra, dim=1, largest=True, sorted=True)
    if extra > k:
        ambiguous = (values[:, k] == values[:, k - 1]).nonzero().flatten()
        values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
    else:
        ambiguous = torch.arange(0)
    if len(ambiguous):
        rows = sims[ambiguous]
        v, i = torch.sort(rows, dim=1, descending=True, stable=True)
        values[ambiguous], indices[ambiguous] = v[:, :k], i[:, :k]
    # Even with the right set, ties inside the top-k may be in any order: order by column,
    # then stable-sort by value.
    by_col = torch.argsort(indices, dim=1)
    values, indices = values.gather(1, by_col), indices.gather(1, by_col)
    by_val = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, by_val), indices.gather(1, by_val)


def knn(
    queries,
    keys,
    k: int,
    *,
    chunk_size: int = 2048,
    key_chunk_size: int = 16384,
    normalize: bool = True,
    backend: str = "torch",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine neighbours of every query among ``keys``.

    Args:
        queries: ``[n, d]`` array (numpy or torch), keys: ``[m, d]``.
        k: neighbours per query, ``1 <= k <= m``.
        chunk_size, key_chunk_size: rows per query / key block; the similarity block held in
            memory is ``chunk_size x key_chunk_size`` floats (default 2048 x 16384 = 128 MiB).
        normalize: L2-normalise both sides first (cosine); False uses raw inner products.
        backend: ``"torch"`` (default, exact tie rule) or ``"faiss"`` (optional, needs faiss
            installed; exact flat inner-product search, ties in unspecified order).

    Returns:
        ``(scores [n, k] float32, indices [n, k] int64)`` sorted by score descending, exact
        ties by key index ascending.
    """
    q = _as_tensor(queries, "queries")
    x = _as_tensor(keys, "keys")
    if q.shape[1] != x.shape[1]:
        raise Veco2Error(f"knn: queries have dimension {q.shape[1]} but keys have {x.shape[1]}")
    n, m = q.shape[0], x.shape[0]
    if not 1 <= k <= m:
        raise Veco2Error(f"knn: k={k} must be between 1 and the number of keys ({m})")
    if chunk_size < 1 or key_chunk_size < 1:
        raise Veco2Error("knn: chunk sizes must be positive")
    if normalize:
        q, x = l2_normalize(q), l2_normalize(x)
    if backend == "faiss":
        return _knn_faiss(q, x, k)
    if backend != "torch":
        raise Veco2Error(f"knn: backend {backend!r} unknown; use 'torch' or 'faiss'")

    out_scores = torch.empty((n, k), dtype=torch.float32)
    out_indices = torch.empty((n, k), dtype=torch.int64)
    with torch.no_grad():
        for q_start in range(0, n, chunk_size):
            q_block = q[q_start : q_start + chunk_size]
            best_v = torch.empty((len(q_block), 0), dtype=torch.float32)
            best_i = torch.empty((len(q_block), 0), dtype=torch.int64)
            for k_start in range(0, m, key_chunk_size):
                k_block = x[k_start : k_start + key_chunk_size]
                sims = q_block @ k_block.T
                v, i = _topk_lowest_index(sims, min(k, len(k_block)))
                # Earlier key blocks hold lower indices and come first in the concatenation,
                # so a stable sort keeps the lowest-index-first rule across blocks.
                v, i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i + k_start], dim=1)
                order = torch.sort(v, dim=1, descending=True, stable=True).indices[:, :k]
                best_v, best_i = v.gather(1, order), i.gather(1, order)
            out_scores[q_start : q_start + len(q_block)] = best_v
            out_indices[q_start : q_start + len(q_block)] = best_i
    return out_scores.numpy(), out_indices.numpy()


def _knn_faiss(q: torch.Tensor, x: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import faiss  # optional dependency
    except ImportError:
        raise Veco2Error("knn: backend='faiss' needs the faiss package (pip install faiss-cpu)") from None
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x.numpy(), dtype=np.float32))
    scores, indices = index.search(np.ascontiguousarray(q.numpy(), dtype=np.float32), k)
    return scores, indices.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Tatoeba
# ---------------------------------------------------------------------------------------------


TATOEBA_HEADLINE = "accuracy"  # English queries -> non-English index: XTREME's number
TATOEBA_REVERSE = "accuracy_xx_to_en"  # non-English queries -> English index, reported beside it
TATOEBA_METRICS = (TATOEBA_HEADLINE, TATOEBA_REVERSE)


def _nearest(query_vecs, key_vecs, chunk_size: int, what: str) -> np.ndarray:
    """Index of the nearest key (cosine, ties to the lowest index) of every query."""
    queries = _as_tensor(query_vecs, f"{what}: query vectors")
    if queries.shape[0] == 0:
        raise Veco2Error(f"{what}: no query sentences")
    _, indices = knn(queries, key_vecs, 1, chunk_size=chunk_size)
    return indices[:, 0]


def tatoeba_accuracy(query_vecs, key_vecs, gold=None, *, chunk_size: int = 2048) -> float:
    """Top-1 retrieval accuracy (percent) of ONE direction: each query retrieves its nearest key
    by cosine, ties to the lowest index; correct when it is ``gold[i]`` (default: key ``i``,
    the line-aligned Tatoeba test files).

    XTREME's Tatoeba number is ``tatoeba_accuracy(english, non_english)`` (English queries);
    :func:`tatoeba_evaluate` computes it together with the other direction.
    """
    nearest = _nearest(query_vecs, key_vecs, chunk_size, "tatoeba_accuracy")
    n = len(nearest)
    gold = np.arange(n) if gold is None else np.asarray(gold, dtype=np.int64)
    if gold.shape != (n,):
        raise Veco2Error(f"tatoeba_accuracy: gold has shape {gold.shape}, expected ({n},)")
    return 100.0 * float(np.mean(nearest == gold))


def tatoeba_evaluate(xx_vecs, en_vecs, *, chunk_size: int = 2048) -> dict:
    """Both Tatoeba directions on line-aligned test files (line ``i`` of ``tatoeba.LANG-eng.LANG``
    translates line ``i`` of ``tatoeba.LANG-eng.eng``).

    Returns:
        ``{"accuracy": percent of English sentences whose nearest non-English sentence is their
        translation (XTREME's direction, the headline number), "accuracy_xx_to_en": the same
        for non-English queries among the English sentences, "predictions": int64 array, one
        entry per ENGLISH line i: the 0-based line number of the non-English sentence it
        retrieved (the official script's ``test_LANG_predictions.txt`` holds the same indices,
        printed as one-element arrays)}``.  The official search is exact L2 over L2-normalised
        vectors, which ranks exactly as cosine; exact ties go to the lowest line here (faiss
        leaves them unspecified).

    Raises:
        Veco2Error: the two sides have different numbers of sentences (not line-aligned), or
            none at all.
    """
    xx, en = _as_tensor(xx_vecs, "tatoeba: non-English vectors"), _as_tensor(en_vecs, "tatoeba: English vectors")
    if xx.shape[0] != en.shape[0]:
        raise Veco2Error(f"tatoeba: {xx.shape[0]} non-English but {en.shape[0]} English sentences; "
                         "the test files must be line-aligned")
    en_to_xx = _nearest(en, xx, chunk_size, "tatoeba")
    xx_to_en = _nearest(xx, en, chunk_size, "tatoeba")
    gold = np.arange(len(en_to_xx))
    return {
        TATOEBA_HEADLINE: 100.0 * float(np.mean(en_to_xx == gold)),
        TATOEBA_REVERSE: 100.0 * float(np.mean(xx_to_en == gold)),
        "predictions": en_to_xx,
    }


# ---------------------------------------------------------------------------------------------
# BUCC 2018 bitext mining
# ---------------------------------------------------------------------------------------------

_MARGINS = {
    "ratio": lambda cos, mean: cos / mean,
    "distance": lambda cos, mean: cos - mean,
    "absolute": lambda cos, mean: cos,
}


def margin_scores(src_vecs, tgt_vecs, *, k: int = 4, margin: str = "ratio", chunk_size: int = 2048):
    """Margin-scored k-NN candidates in both directions (Artetxe & Schwenk 2019).

    ``score(x, y) = margin(cos(x, y), (mean cos(x, kNN_tgt(x)) + mean cos(kNN_src(y), y)) / 2)``
    with ``margin`` ``"ratio"`` (a / b, the XTREME setting), ``"distance"`` (a - b) or
    ``"absolute"`` (a).  The k-NN means include the candidate itself, as in LASER.  ``k`` is
    clipped to the other side's size.

    Returns:
        ``(fwd_ind [n_src, k1], fwd_scores, bwd_ind [n_tgt, k2], bwd_scores)``: for every
        source its k target neighbours and their margin scores, and the same backwards.
    """
    if margin not in _MARGINS:
        raise Veco2Error(f"margin {margin!r} unknown; use one of {', '.join(_MARGINS)}")
    src, tgt = l2_normalize(_as_tensor(src_vecs, "src_vecs")), l2_normalize(_as_tensor(tgt_vecs, "tgt_vecs"))
    if len(src) == 0 or len(tgt) == 0:
        raise Veco2Error("BUCC mining needs at least one source and one target sentence")
    fwd_cos, fwd_ind = knn(src, tgt, min(k, len(tgt)), chunk_size=chunk_size, normalize=False)
    bwd_cos, bwd_ind = knn(tgt, src, min(k, len(src)), chunk_size=chunk_size, normalize=False)
    fwd_mean = fwd_cos.astype(np.float64).mean(axis=1)
    bwd_mean = bwd_cos.astype(np.float64).mean(axis=1)
    f = _MARGINS[margin]
    fwd_scores = f(fwd_cos.astype(np.float64), (fwd_mean[:, None] + bwd_mean[fwd_ind]) / 2)
    bwd_scores = f(bwd_cos.astype(np.float64), (bwd_mean[:, None] + fwd_mean[bwd_ind]) / 2)
    return fwd_ind, fwd_scores, bwd_ind, bwd_scores


def _check_ids(ids, n: int, what: str) -> Sequence:
    if ids is None:
        return range(n)
    if len(ids) != n:
        raise Veco2Error(f"{what}: {len(ids)} ids for {n} sentence vectors (wrong id file?)")
    return ids


def mine(
    src_vecs,
    tgt_vecs,
    *,
    k: int = 4,
    margin: str = "ratio",
    src_ids: Sequence | None = None,
    tgt_ids: Sequence | None = None,
    chunk_size: int = 2048,
) -> list[Candidate]:
    """Candidate sentence pairs ``(src_id, tgt_id, score)``, best score first.

    LASER ``retrieval="max"`` mode: every source proposes its best-margin target (forward),
    every target its best-margin source (backward); the union is walked by score, highest
    first, and a pair is kept only if neither its source nor its target was used by a kept
    pair (greedy one-to-one de-duplication).  Equal scores keep forward before backward and
    lower indices first (stable sort; LASER's unstable ``argsort`` leaves this unspecified).
    No threshold is applied here: see :func:`bucc_threshold_search`.

    ``src_ids`` / ``tgt_ids`` map row numbers to sentence ids (e.g. ``de-000123``); they must
    have one id per vector.  Rows that share an id can propose the same id pair twice; it is
    returned once, with its highest score (:func:`distinct_pairs`).
    """
    src_ids = _check_ids(src_ids, len(src_vecs), "mine: src_ids")
    tgt_ids = _check_ids(tgt_ids, len(tgt_vecs), "mine: tgt_ids")
    fwd_ind, fwd_scores, bwd_ind, bwd_scores = margin_scores(
        src_vecs, tgt_vecs, k=k, margin=margin, chunk_size=chunk_size
    )
    n_src, n_tgt = len(fwd_ind), len(bwd_ind)
    # argmax returns the first maximum: on equal margins the nearer (lower-index) neighbour.
    fwd_best = fwd_ind[np.arange(n_src), fwd_scores.argmax(axis=1)]
    bwd_best = bwd_ind[np.arange(n_tgt), bwd_scores.argmax(axis=1)]
    pair_src = np.concatenate([np.arange(n_src), bwd_best])
    pair_tgt = np.concatenate([fwd_best, np.arange(n_tgt)])
    scores = np.concatenate([fwd_scores.max(axis=1), bwd_scores.max(axis=1)])
    seen_src, seen_tgt, candidates = set(), set(), []
    for p in np.argsort(-scores, kind="stable"):
        s, t = int(pair_src[p]), int(pair_tgt[p])
        if s in seen_src or t in seen_tgt:
            continue
        seen_src.add(s)
        seen_tgt.add(t)
        candidates.append((src_ids[s], tgt_ids[t], float(scores[p])))
    return distinct_pairs(candidates)


def distinct_pairs(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Each distinct ``(src_id, tgt_id)`` pair once, with the highest score it was given, in
    order of first appearance (so a best-first list stays best-first).

    The official XTREME scorer (``read_candidate2score`` in ``third_party/utils_retrieve.py``)
    keys candidates by id pair and keeps the maximum score; counting a repeated pair twice
    would inflate both the extracted and the correct counts of the threshold search.
    """
    best: dict[tuple, float] = {}
    for src, tgt, score in candidates:
        pair = (src, tgt)
        if pair not in best or score > best[pair]:
            best[pair] = score
    return [(src, tgt, score) for (src, tgt), score in best.items()]


def _gold_set(gold_pairs: Iterable) -> set:
    gold = {tuple(p) for p in gold_pairs}
    if not gold:
        raise Veco2Error("BUCC: the gold pair list is empty")
    if any(len(p) != 2 for p in gold):
        raise Veco2Error("BUCC: gold pairs must be (src_id, tgt_id) pairs")
    return gold


def bucc_f1(candidates: Sequence[Candidate], gold_pairs: Iterable, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 (percent) of the pairs extracted at ``threshold``: every
    distinct candidate pair whose highest score is ``>= threshold``.
    Returns ``{"precision","recall","f1","threshold"}``."""
    gold = _gold_set(gold_pairs)
    extracted = {(s, t) for s, t, score in distinct_pairs(candidates) if score >= threshold}
    correct = len(extracted & gold)
    precision = correct / len(extracted) if extracted else 0.0
    recall = correct / len(gold)
    f1 = 2 * precision * recall / (precision + recall) if correct else 0.0
    return {"precision": 100.0 * precision, "recall": 100.0 * recall, "f1": 100.0 * f1, "threshold": float(threshold)}


def bucc_statistics(candidates: Sequence[Candidate], gold_pairs: Iterable, threshold: float, src_ids: Sequence):
    """Per source sentence (``src_ids`` order): its correct, extracted and gold pairs at ``threshold``,
    the counts :func:`bucc_f1` sums (for the paired bootstrap over sentences)."""
    from .metrics import ExampleStatistics

    gold = _gold_set(gold_pairs)
    extracted = {(s, t) for s, t, score in distinct_pairs(candidates) if score >= threshold}
    row = {src: i for i, src in enumerate(src_ids)}
    rows = np.zeros((len(row), 3), dtype=np.float64)
    for pairs, column in ((extracted & gold, 0), (extracted, 1), (gold, 2)):
        for src, _ in pairs:
            if src not in row:
                raise Veco2Error(f"BUCC: pair source {src!r} is not a test sentence id")
            rows[row[src], column] += 1
    return ExampleStatistics("f1", ["tp", "pred", "gold"], rows, "f1")


def bucc_threshold_search(candidates: Sequence[Candidate], gold_pairs: Iterable) -> float:
    """Threshold maximising F1 of ``score >= threshold`` extraction against ``gold_pairs``.

    The search is over DISTINCT scores (every candidate tied with the cut is extracted
    together, exactly as extraction will do), the lowest candidate is a valid cut, and on equal
    F1 the higher cut (fewer pairs) wins.  The returned threshold lies halfway between the
    chosen score and the next lower distinct score (the official script's intent: a margin
    that transfers to test), or is the chosen score itself when it is the lowest one.  Either
    way, extraction on these candidates at the returned threshold is exactly the chosen set.
    If no candidate is correct (F1 = 0 at every cut) the highest score is returned, with a
    warning.

    A pair listed more than once counts once, with its highest score (:func:`distinct_pairs`,
    as the official ``read_candidate2score``); otherwise a repeated wrong pair would lower
    precision twice and a repeated gold pair would count as two correct extractions.
    """
    if not candidates:
        raise Veco2Error("BUCC threshold search: no candidates")
    gold = _gold_set(gold_pairs)
    candidates = distinct_pairs(candidates)
    scores = np.array([c[2] for c in candidates], dtype=np.float64)
    correct = np.array([(c[0], c[1]) in gold for c in candidates], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    scores, correct = scores[order], correct[order]
    distinct = np.unique(scores)[::-1]  # descending
    # number extracted / correct at cut d = counts over scores >= d
    n_extracted = np.searchsorted(-scores, -distinct, side="right")
    n_correct = np.cumsum(correct)[n_extracted - 1]
    precision = n_correct / n_extracted
    recall = n_correct / len(gold)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(n_correct > 0, 2 * precision * recall / (precision + recall), 0.0)
    if not (f1 > 0).any():
        log.warning("BUCC threshold search: no candidate is a gold pair; returning the highest score")
        return float(distinct[0])
    best = int(np.argmax(f1))  # first maximum = highest cut among equal F1
    if best + 1 < len(distinct):
        mid = (distinct[best] + distinct[best + 1]) / 2
        if distinct[best + 1] < mid <= distinct[best]:  # adjacent floats: keep the score itself
            return float(mid)
    return float(distinct[best])


def bucc_evaluate(
    dev_src,
    dev_tgt,
    dev_gold: Iterable,
    test_src,
    test_tgt,
    test_gold: Iterable,
    *,
    dev_src_ids: Sequence | None = None,
    dev_tgt_ids: Sequence | None = None,
    test_src_ids: Sequence | None = None,
    test_tgt_ids: Sequence | None = None,
    k: int = 4,
    margin: str = "ratio",
    chunk_size: int = 2048,
) -> dict:
    """BUCC 2018 protocol: mine dev ("sample") and test, choose the threshold on dev, apply
    that SAME threshold to test.

    Fixes relative to the official XTREME BUCC scripts: (1) the threshold is computed and
    passed explicitly (the script referenced an undefined threshold variable); (2) ids are
    given per side and checked against the number of vectors (the script read the wrong id
    file); (3) the dev threshold is carried to test rather than re-optimised or lost; the
    search itself is over distinct scores (:func:`bucc_threshold_search`).

    Returns ``{"threshold", "dev": bucc_f1(...), "test": bucc_f1(...)}``; test F1 is the
    reported BUCC number.
    """
    dev_candidates = mine(
        dev_src, dev_tgt, k=k, margin=margin, src_ids=dev_src_ids, tgt_ids=dev_tgt_ids, chunk_size=chunk_size
    )
    threshold = bucc_threshold_search(dev_candidates, dev_gold)
    test_candidates = mine(
        test_src, test_tgt, k=k, margin=margin, src_ids=test_src_ids, tgt_ids=test_tgt_ids, chunk_size=chunk_size
    )
    return {
        "threshold": threshold,
        "dev": bucc_f1(dev_candidates, dev_gold, threshold),
        "test": bucc_f1(test_candidates, test_gold, threshold),
    }

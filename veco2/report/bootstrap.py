"""Uncertainty from the test data itself: a paired bootstrap over test examples (and over seeds) of
task scores and of the differences between two models (Efron & Tibshirani 1993; for NLP, Koehn
2004, "Statistical significance tests for machine translation evaluation", and Berg-Kirkpatrick et
al. 2012, EMNLP).  Each replicate draws every language's test examples with replacement (the same
draw for both models of a difference: they were scored on the same examples) and, per model, its
seeds with replacement; the task score of a replicate is computed from the summed per-example
rows (:class:`veco2.xtreme.metrics.ExampleStatistics`) exactly as the scorer computes it.  The
interval is the 2.5 and 97.5 percentiles of the replicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

#: Replicates per interval and the seed of their draws (written in every table note).
RESAMPLES = 1000
SEED = 0
LEVEL = 0.95

#: One model's runs of one task: ``{seed: {language: ExampleStatistics}}``.
Runs = Mapping[int, Mapping[str, object]]


@dataclass(frozen=True)
class Interval:
    """A point estimate (on the observed data) and its bootstrap interval."""

    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def excludes(self, value: float) -> bool:
        return self.low > value or self.high < value


def draw_counts(sizes: Mapping[str, int], resamples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per language, ``[resamples, n]`` counts: how often each test example is drawn in a replicate."""
    return {lang: rng.multinomial(n, np.full(n, 1.0 / n), size=resamples) for lang, n in sizes.items()}


def _per_seed_scores(runs: Runs, languages: Sequence[str], score_keys: Sequence[str],
                     counts: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """Task scores ``[R, S]`` (observed data: ``R = 1``) of each seed of ``runs``: the mean over
    ``score_keys`` of the mean over ``languages``, from the resampled sums of the rows."""
    per_seed = []
    for seed in sorted(runs):
        by_key = []
        for key in score_keys:
            by_lang = []
            for lang in languages:
                stats = runs[seed][lang]
                sums = stats.rows.sum(axis=0)[None] if counts is None else counts[lang] @ stats.rows
                values = stats.score_columns(sums, len(stats.rows))
                by_lang.append(values[:, stats.score_names().index(key)])
            by_key.append(np.mean(by_lang, axis=0))
        per_seed.append(np.mean(by_key, axis=0))
    return np.stack(per_seed, axis=1)


def _seed_means(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per replicate, the mean over seeds drawn with replacement (one seed: that seed)."""
    resamples, seeds = scores.shape
    if seeds == 1:
        return scores[:, 0]
    draws = rng.integers(0, seeds, size=(resamples, seeds))
    return np.take_along_axis(scores, draws, axis=1).mean(axis=1)


def check_paired(a: Runs, b: Runs, languages: Sequence[str]) -> dict[str, int]:
    """Test-set sizes per language; the two models must have been scored on the same examples."""
    sizes = {}
    for lang in languages:
        lengths = {len(run[lang].rows) for run in [*a.values(), *b.values()]}
        if len(lengths) != 1:
            raise ValueError(f"{lang}: runs scored on different numbers of test examples {sorted(lengths)}")
        sizes[lang] = lengths.pop()
    return sizes


def score_interval(runs: Runs, languages: Sequence[str], score_keys: Sequence[str], *,
                   resamples: int = RESAMPLES, seed: int = SEED,
                   counts: Mapping[str, np.ndarray] | None = None) -> Interval:
    """The task score (mean over seeds) of one model and its 95% interval over examples and seeds."""
    rng = np.random.default_rng(seed)
    sizes = check_paired(runs, runs, languages)
    counts = counts if counts is not None else draw_counts(sizes, resamples, rng)
    estimate = float(_per_seed_scores(runs, languages, score_keys, None).mean())
    replicates = _seed_means(_per_seed_scores(runs, languages, score_keys, counts), rng)
    return _interval(estimate, replicates)


def delta_interval(a: Runs, b: Runs, languages: Sequence[str], score_keys: Sequence[str], *,
                   resamples: int = RESAMPLES, seed: int = SEED,
                   counts: Mapping[str, np.ndarray] | None = None) -> Interval:
    """``score(a) - score(b)`` with its paired 95% interval: the same example draws for both, seeds
    drawn per model."""
    rng = np.random.default_rng(seed)
    sizes = check_paired(a, b, languages)
    counts = counts if counts is not None else draw_counts(sizes, resamples, rng)
    estimate = float(_per_seed_scores(a, languages, score_keys, None).mean()
                     - _per_seed_scores(b, languages, score_keys, None).mean())
    replicates = (_seed_means(_per_seed_scores(a, languages, score_keys, counts), rng)
                  - _seed_means(_per_seed_scores(b, languages, score_keys, counts), rng))
    return _interval(estimate, replicates)


def average_interval(parts: Sequence[tuple[Runs, Runs | None, Sequence[str], Sequence[str]]], *,
                     resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The mean over tasks (``parts``: one ``(a, b or None, languages, score_keys)`` per task) of the
    task scores (``b`` None) or of the paired differences, each task resampled on its own."""
    rng = np.random.default_rng(seed)
    estimates, replicates = [], []
    for a, b, languages, keys in parts:
        sizes = check_paired(a, b if b is not None else a, languages)
        counts = draw_counts(sizes, resamples, rng)
        value = _per_seed_scores(a, languages, keys, None).mean()
        sample = _seed_means(_per_seed_scores(a, languages, keys, counts), rng)
        if b is not None:
            value -= _per_seed_scores(b, languages, keys, None).mean()
            sample = sample - _seed_means(_per_seed_scores(b, languages, keys, counts), rng)
        estimates.append(value)
        replicates.append(sample)
    return _interval(float(np.mean(estimates)), np.mean(replicates, axis=0))


def _interval(estimate: float, replicates: np.ndarray) -> Interval:
    tail = (1 - LEVEL) / 2 * 100
    low, high = (float(x) for x in np.percentile(replicates, [tail, 100 - tail]))
    # a score the resampling cannot change (every row the same) differs from the estimate only by
    # the rounding of its sums: report the estimate itself, not "0.2 [0.3, 0.3]"
    low, high = (estimate if abs(x - estimate) < 1e-9 * max(1.0, abs(estimate)) else x for x in (low, high))
    return Interval(estimate, low, high)


def note(resamples: int = RESAMPLES, seed: int = SEED) -> str:
    """The sentence every table with intervals carries."""
    return (f"[low, high]: {LEVEL:.0%} paired bootstrap interval over test examples and seeds "
            f"({resamples} resamples, seed {seed}); * = the interval excludes 0.")

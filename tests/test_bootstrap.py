"""The paired bootstrap of the report, against hand-computed cases, and the per-example rows it
resamples against the scorers they come from."""

from __future__ import annotations

import random

import numpy as np
import pytest

from veco2.report import bootstrap
from veco2.xtreme import metrics
from veco2.xtreme.metrics import ExampleStatistics


def _accuracy_runs(*per_seed: list[int], lang: str = "de") -> dict:
    return {seed: {lang: ExampleStatistics("mean", ["accuracy"], np.array(rows, dtype=float)[:, None])}
            for seed, rows in enumerate(per_seed, 1)}


def test_paired_delta_by_hand():
    # A right on examples 0, 1, 3; B only on 1: observed 75 - 25 = +50.
    a, b = _accuracy_runs([1, 1, 0, 1]), _accuracy_runs([0, 1, 0, 0])
    counts = {"de": np.array([[4, 0, 0, 0],    # A 100, B 0   -> +100
                              [0, 0, 4, 0],    # A 0,   B 0   -> 0
                              [1, 1, 1, 1],    # A 75,  B 25  -> +50
                              [0, 2, 0, 2]])}  # A 100, B 50  -> +50
    interval = bootstrap.delta_interval(a, b, ["de"], ["accuracy"], counts=counts)
    assert interval.estimate == pytest.approx(50.0)
    # percentiles of (0, 50, 50, 100), numpy's linear interpolation: 2.5 % -> 0.075 of the first gap,
    # 97.5 % -> 2.925: 50 + 0.925 * 50
    assert (interval.low, interval.high) == pytest.approx((3.75, 96.25))
    assert interval.excludes_zero


def test_score_interval_by_hand_and_f1_from_summed_counts():
    # chunk counts (tp, pred, gold) of three sentences: F1 = 2*3 / (4 + 5) = 66.67 on the whole set
    stats = ExampleStatistics("f1", ["tp", "pred", "gold"], np.array([[2, 2, 3], [1, 2, 1], [0, 0, 1]], float))
    runs = {1: {"en": stats}}
    counts = {"en": np.array([[3, 0, 0], [0, 0, 3], [1, 1, 1]])}  # F1 80, 0, 66.67
    interval = bootstrap.score_interval(runs, ["en"], ["f1"], counts=counts)
    assert interval.estimate == pytest.approx(200 * 3 / 9)
    sorted_values = np.array([0.0, 200 * 3 / 9, 80.0])
    assert (interval.low, interval.high) == pytest.approx(tuple(np.percentile(sorted_values, [2.5, 97.5])))


def test_seeds_are_averaged_and_resampled():
    a = _accuracy_runs([1, 1, 1, 1], [0, 0, 0, 0])  # seed 1: 100, seed 2: 0 -> mean 50
    interval = bootstrap.score_interval(a, ["de"], ["accuracy"], resamples=2000)
    assert interval.estimate == pytest.approx(50.0)
    # the example draws change nothing (each seed is constant); only the seed draws do:
    # a replicate is 0, 50 or 100 with probability 1/4, 1/2, 1/4
    assert (interval.low, interval.high) == (0.0, 100.0)


def test_no_effect_gives_an_interval_around_zero_and_a_real_one_excludes_it():
    rng = np.random.default_rng(1)
    same = rng.integers(0, 2, 400)
    flips = same.copy()
    flips[rng.choice(400, 8, replace=False)] ^= 1  # 8 of 400 examples differ: no real effect
    null = bootstrap.delta_interval(_accuracy_runs(flips.tolist()), _accuracy_runs(same.tolist()), ["de"], ["accuracy"])
    assert null.low <= 0 <= null.high
    better = np.where(rng.random(400) < 0.3, 1, same)  # 30 % of the errors fixed
    effect = bootstrap.delta_interval(_accuracy_runs(better.tolist()), _accuracy_runs(same.tolist()), ["de"], ["accuracy"])
    assert effect.excludes_zero and effect.low > 0


def test_different_test_sets_cannot_be_paired():
    with pytest.raises(ValueError, match="different numbers of test examples"):
        bootstrap.delta_interval(_accuracy_runs([1, 0]), _accuracy_runs([1, 0, 1]), ["de"], ["accuracy"])


# ----------------------------------------------------------------------------------------------
# The rows agree with the scorers


def test_chunk_rows_sum_to_seqeval_f1():
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG"]
    rnd = random.Random(0)
    gold = [[rnd.choice(tags) for _ in range(rnd.randint(1, 9))] for _ in range(60)]
    pred = [[t if rnd.random() < 0.7 else rnd.choice(tags) for t in s] for s in gold]
    for semantics in metrics.SEQEVAL_SEMANTICS:
        stats = metrics.chunk_statistics(gold, pred, semantics=semantics)
        assert stats.score()["f1"] == pytest.approx(metrics.seqeval_f1(gold, pred, semantics=semantics))
    # and the independent reference: seqeval itself (1.x semantics)
    from seqeval.metrics import f1_score

    assert metrics.chunk_statistics(gold, pred, semantics="1.x").score()["f1"] == pytest.approx(100 * f1_score(gold, pred))


def test_qa_rows_average_to_squad_and_mlqa_scores():
    references = {"q1": ["the cat"], "q2": ["a dog", "dog"], "q3": ["Paris"], "q4": ["blue sky"]}
    predictions = {"q1": "cat", "q2": "the dog", "q4": "sky"}  # q3 unanswered: 0
    stats = metrics.qa_statistics(predictions, references)
    assert stats.score() == pytest.approx(metrics.squad_f1_em(predictions, references))
    assert metrics.qa_statistics(predictions, references, "de").score() == pytest.approx(
        metrics.mlqa_f1_em(predictions, references, "de"))
    assert stats.rows[2].tolist() == [0.0, 0.0]


def test_bucc_rows_sum_to_bucc_f1():
    from veco2.xtreme.retrieval import bucc_f1, bucc_statistics

    candidates = [("s1", "t1", 1.3), ("s2", "t9", 1.2), ("s3", "t3", 1.05), ("s4", "t4", 0.9)]
    gold = [("s1", "t1"), ("s3", "t3"), ("s4", "t4"), ("s5", "t5")]
    stats = bucc_statistics(candidates, gold, 1.0, ["s1", "s2", "s3", "s4", "s5", "s6"])
    assert stats.score()["f1"] == pytest.approx(bucc_f1(candidates, gold, 1.0)["f1"])  # 2*2 / (3 + 4)
    assert stats.rows.sum(axis=0).tolist() == [2, 3, 4]


def test_a_score_resampling_cannot_change_has_the_estimate_as_its_interval():
    rows = np.full((7, 1), 1 / 7)  # Tatoeba chance: every query 1/7
    interval = bootstrap.score_interval({0: {"de": ExampleStatistics("mean", ["accuracy"], rows)}}, ["de"], ["accuracy"])
    assert interval.low == interval.estimate == interval.high == pytest.approx(100 / 7)


def test_the_average_of_one_task_is_that_tasks_interval():
    """The report takes every scope's interval from average_interval (one task or several): with one
    task it must draw exactly what score_interval / delta_interval draw."""
    rng = np.random.default_rng(1)

    def runs(p):
        return {seed: {lang: ExampleStatistics("mean", ["accuracy"], (rng.random((50, 1)) < p).astype(float))
                       for lang in ("de", "fr")} for seed in (1, 2)}

    a, b = runs(0.6), runs(0.4)
    assert bootstrap.average_interval([(a, b, ["de", "fr"], ["accuracy"])]) == \
        bootstrap.delta_interval(a, b, ["de", "fr"], ["accuracy"])
    assert bootstrap.average_interval([(a, None, ["de"], ["accuracy"])]) == \
        bootstrap.score_interval(a, ["de"], ["accuracy"])

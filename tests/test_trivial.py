"""Trivial baselines: the rule of each family by hand, their rows in the results tree, and the
report's English Δ against them."""

from __future__ import annotations

import collections
import json
import statistics

import pytest

from veco2.xtreme.data import load_split
from veco2.xtreme.registry import get_task
from veco2.xtreme.trivial import predict_trivially, run_trivial


def test_classification_predicts_the_majority_training_label(tmp_path):
    train = load_split("xnli", "train", "en")
    majority, count = collections.Counter(e["label"] for e in train).most_common(1)[0]
    result = run_trivial("xnli", tmp_path, languages=["en", "de"])
    test = load_split("xnli", "test", "de")
    expected = 100 * sum(e["label"] == majority for e in test) / len(test)
    assert result["scores"]["de"]["accuracy"] == pytest.approx(expected)
    assert result["model"]["rule"] == f"majority label {majority!r} of the English training set"
    saved = json.loads((tmp_path / "xnli" / "seed0" / "results.json").read_text())
    assert saved["task_score"] == pytest.approx(result["task_score"])
    assert (tmp_path / "xnli" / "seed0" / "example_statistics.json").exists()


def test_tagging_predicts_the_most_frequent_training_tag_everywhere():
    train = [{"words": ["the", "dog", "runs"], "tags": ["DET", "NOUN", "VERB"]},
             {"words": ["The", "runs", "runs"], "tags": ["DET", "NOUN", "NOUN"]}]
    predictions, rule = predict_trivially(get_task("udpos"), train, [{"words": ["THE", "runs", "cat"]}, {"words": ["a"]}])
    assert predictions == [["NOUN", "NOUN", "NOUN"], ["NOUN"]]  # NOUN 3 of 6 tags
    assert "'NOUN'" in rule
    ner = [{"words": ["Ann", "sees", "a", "dog"], "tags": ["B-PER", "O", "O", "O"]}]
    assert predict_trivially(get_task("panx"), ner, [{"words": ["x", "y"]}])[0] == [["O", "O"]]


def test_qa_span_is_the_first_k_context_words():
    train = [{"answers": {"text": [a]}} for a in ("one", "two words", "three words here")]
    assert statistics.median([1, 2, 3]) == 2
    predictions, rule = predict_trivially(get_task("xquad"), train, [{"id": "q", "context": "a b c d"}])
    assert predictions == {"q": "a b"} and "first 2 context words" in rule


def test_retrieval_is_chance_and_nothing_extracted(tmp_path):
    tatoeba = run_trivial("tatoeba", tmp_path, languages=["de"])
    n = len(load_split("tatoeba", "test", "de")["tgt"])
    assert tatoeba["scores"]["de"]["accuracy"] == pytest.approx(100 / n)
    assert run_trivial("bucc2018", tmp_path, languages=["de"])["scores"]["de"]["f1"] == 0.0


def test_the_report_shows_the_trivial_row_and_englishs_delta_against_it(tmp_path):
    """A model that predicts the gold labels beats the trivial row on English with an interval."""
    from veco2.report.load import load_results
    from veco2.report.tables import ablation_table, cost_table, per_language_table
    from veco2.xtreme import metrics
    from veco2.xtreme.families import FAMILIES
    from veco2.xtreme.results import RunResult, write_example_statistics

    root = tmp_path / "results"
    run_trivial("xnli", root / "xtreme" / "trivial", languages=["en", "de"])
    family = FAMILIES["classification"](get_task("xnli"), None, None)
    for seed in (1, 2):
        scores, stats = {}, {}
        for lang in ("en", "de"):
            test = load_split("xnli", "test", lang)
            gold = [e["label"] for e in test]
            predictions = gold if lang == "en" else ["neutral"] * len(gold)
            scores[lang], stats[lang] = family.score(test, predictions, lang), family.statistics(test, predictions, lang)
        seed_dir = root / "xtreme" / "mlm" / "xnli" / f"seed{seed}"
        write_example_statistics(seed_dir, stats)
        RunResult(task="xnli", languages=["en", "de"], seed=seed, scores=scores,
                  data={"demo": True}).write(seed_dir / "results.json")
    tree = load_results(root)
    assert tree.variants == ["mlm", "trivial"] and tree.baselines == [] and tree.pretrained == ["mlm"]
    table = per_language_table(tree, "xnli")
    mlm = table.numeric[table.numeric["variant"] == "mlm"].iloc[0]
    assert mlm["en Δ trivial significant"] is True and mlm["en Δ trivial low"] > 0
    assert "trivial" in ablation_table(tree).numeric["variant"].tolist()
    assert cost_table(tree).numeric["variant"].tolist() == ["mlm"]  # the trivial row was not pre-trained
    assert any("trivial: what a model that learned nothing" in note for note in ablation_table(tree).notes)
    # the trivial row's seed0 is not a fine-tuning seed the variants lack
    assert not [gap for gap in tree.missing if "xnli" in gap], tree.missing

"""Trivial baselines: what a model that learned nothing from the text would score, per task and
language, written like any other run (results.json and example_statistics.json under
``OUT/TASK/seed0``) so that every table shows them and every interval can be compared with them.

* classification (XNLI, PAWS-X): the majority label of the English training set;
* tagging (UD-POS, PAN-X): the most frequent tag of the English training set, for every word
  (``NOUN``; ``O`` for PAN-X, which finds no entity: F1 0).  Not a per-word tag lookup: that is a
  lexical model learned from the training words (about 90 English POS F1 on the demo data), not a
  model that learned nothing;
* QA: the first ``k`` words of the context, ``k`` = the median length in words of the English
  training answers (a positional span);
* Tatoeba: chance, 1 / (number of candidate sentences) per query; BUCC: no pair extracted (F1 0).

``veco2 trivial --task TASK --out DIR`` (the workflow's ``trivial_baseline`` rule).
"""

from __future__ import annotations

import collections
import statistics
import time
from pathlib import Path

import numpy as np

from ..errors import Veco2Error
from ..provenance import config_hash, provenance
from . import aggregate, metrics
from .data import is_demo_root, load_split, resolve_root, run_languages
from .families import FAMILIES
from .registry import get_task
from .results import RunResult, check_statistics, write_example_statistics

TRIVIAL = aggregate.TRIVIAL


def _most_frequent(values) -> str:
    counts = collections.Counter(values)
    return min(counts, key=lambda value: (-counts[value], value))  # ties: alphabetical, reproducible


def _majority_label(train: list[dict]) -> str:
    return _most_frequent(e["label"] for e in train if e["label"] is not None)


def _most_frequent_tag(train: list[dict]) -> str:
    return _most_frequent(tag for example in train for tag in example["tags"])


def _answer_words(train: list[dict]) -> int:
    lengths = [len(answer.split()) for e in train for answer in e["answers"]["text"][:1]]
    return max(1, int(statistics.median(lengths))) if lengths else 1


def predict_trivially(task, train: list[dict], examples: list[dict]):
    """The trivial predictions of a fine-tuned task's ``examples``, from its English ``train`` split."""
    if task.family == "classification":
        label = _majority_label(train)
        return [label] * len(examples), f"majority label {label!r} of the English training set"
    if task.family == "tagging":
        tag = _most_frequent_tag(train)
        return [[tag] * len(e["words"]) for e in examples], f"the most frequent English training tag {tag!r}"
    if task.family == "qa":
        k = _answer_words(train)
        return ({e["id"]: " ".join(e["context"].split()[:k]) for e in examples},
                f"the first {k} context words (median English training answer length)")
    raise Veco2Error(f"{task.name}: no trivial predictor for family {task.family!r}")


def run_trivial(task: str, out_dir: str | Path, *, data_root: str | Path | None = None, hub: bool = False,
                languages=None) -> dict:
    """Score the trivial baseline of ``task`` on its test languages; returns the results.json dict."""
    started = time.time()
    spec = get_task(task)
    test_languages = run_languages(spec, languages, data_root, hub)
    root = None if hub else resolve_root(data_root)
    scores, stats = {}, {}
    if spec.family == "retrieval":
        rule = "chance (1 / candidates per query)" if spec.name == "tatoeba" else "no pair extracted"
        for lang in test_languages:
            data = load_split(spec, "test", lang, data_root=data_root, hub=hub)
            if spec.name == "tatoeba":
                n = len(data["tgt"])
                stats[lang] = metrics.ExampleStatistics("mean", ["accuracy"], np.full((n, 1), 1.0 / n))
            else:
                per_source = collections.Counter(src for src, _ in data["gold"])
                rows = np.array([[0.0, 0.0, per_source.get(s, 0)] for s in data["src_ids"]], dtype=np.float64)
                stats[lang] = metrics.ExampleStatistics("f1", ["tp", "pred", "gold"], rows, "f1")
            scores[lang] = stats[lang].score()
    else:
        family = FAMILIES[spec.family](spec, None, None)  # scoring needs neither tokenizer nor settings
        train = load_split(spec, "train", spec.train_language, data_root=data_root, hub=hub)
        rule = ""
        for lang in test_languages:
            examples = load_split(spec, "test", lang, data_root=data_root, hub=hub)
            predictions, rule = predict_trivially(spec, train, examples)
            scores[lang] = family.score(examples, predictions, lang)
            stats[lang] = family.statistics(examples, predictions, lang)
            check_statistics(stats[lang], scores[lang], f"{spec.name} {lang}")
    summary = aggregate.task_score(scores, spec.name, languages=test_languages)
    run_config = {"task": spec.name, "version": spec.version, "model": TRIVIAL, "rule": rule,
                  "languages": test_languages}
    seed_dir = Path(out_dir) / spec.name / f"seed{aggregate.RETRIEVAL_SEED}"
    result = RunResult(
        task=spec.name, version=spec.version, languages=test_languages, seed=aggregate.RETRIEVAL_SEED,
        scores=scores, task_score=summary["score"], task_means=summary,
        model={"name": TRIVIAL, "rule": rule},
        data={"source": "hub" if hub else "local", "root": None if root is None else str(root),
              "demo": bool(root is not None and is_demo_root(root))},
        wall_seconds=round(time.time() - started, 2), run_hash=config_hash(run_config),
        provenance=provenance(run_config))
    write_example_statistics(seed_dir, stats)
    result.write(seed_dir / "results.json")
    return result.to_json()

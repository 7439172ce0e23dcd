"""XTREME aggregation: languages -> task score -> category scores and the XTREME score.

Rules of Hu et al. 2020 (XTREME, arXiv 2003.11080): every metric is averaged over the task's
languages, unweighted; a QA task scores (mean F1 + mean EM) / 2; the XTREME score is the mean of the
9 task scores (not of the category means); a missing language is an error.  The task, category and
language lists come from :mod:`veco2.xtreme.registry`; values are percent (0-100), never rescaled.
Rules and the results layout :func:`load_results_tree` reads: ``docs/xtreme.md#aggregation``.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from veco2.errors import InputError, Veco2Error
from veco2.xtreme.registry import CATEGORY_ORDER, get_task, list_tasks
from veco2.xtreme.results import RunResult

log = logging.getLogger(__name__)

# Derived from the task registry (veco2/xtreme/tasks/*.yaml), the one place each fact is written:
# the tasks in the tables' order, their categories, the metric keys their task score averages and
# their official test languages.
_REGISTERED = [get_task(name) for name in list_tasks()]
TASKS: tuple[str, ...] = tuple(spec.name for spec in _REGISTERED)
TASK_CATEGORIES: dict[str, tuple[str, ...]] = {
    category: tuple(spec.name for spec in _REGISTERED if spec.category == category)
    for category in CATEGORY_ORDER if any(spec.category == category for spec in _REGISTERED)}
CATEGORIES: tuple[str, ...] = tuple(TASK_CATEGORIES)

QA_TASKS = frozenset(spec.name for spec in _REGISTERED if spec.family == "qa")
RETRIEVAL_TASKS = frozenset(spec.name for spec in _REGISTERED if spec.family == "retrieval")
RETRIEVAL_SEED = 0
#: The row of the trivial baselines (veco2.xtreme.trivial) in a results tree: ``xtreme/trivial/TASK/seed0``.
TRIVIAL = "trivial"

# Metric keys the task score is computed from, as written in results.json "scores" (the task
# file's `score_keys`).  Extra keys (udpos "token_accuracy", tatoeba "accuracy_xx_to_en", ...) are
# averaged and reported but do not enter the task score.
TASK_METRICS: dict[str, tuple[str, ...]] = {spec.name: spec.score_keys for spec in _REGISTERED}
OFFICIAL_LANGUAGES: dict[str, tuple[str, ...]] = {spec.name: spec.languages for spec in _REGISTERED}


def _check_task(task: str) -> None:
    if task not in TASK_METRICS:
        raise Veco2Error(f"unknown XTREME task {task!r}; tasks: {', '.join(TASKS)}")


def task_score(
    per_language: Mapping[str, Mapping[str, float]],
    task: str,
    *,
    languages: Sequence[str] | None = None,
) -> dict[str, float]:
    """Average one task over its languages.

    Args:
        per_language: ``{lang: {metric: value}}`` for one run.
        task: one of :data:`TASKS`.
        languages: the languages to aggregate over (default: the official list).  A declared
            subset (the offline demo) is allowed; every listed language must be present.

    Returns:
        ``{metric: unweighted mean over languages, ..., "score": task score}``; ``score`` is
        the headline metric's mean, or ``(f1 + exact_match) / 2`` for QA tasks.

    Raises:
        Veco2Error: naming the task and the missing languages / metrics.
    """
    _check_task(task)
    langs = list(OFFICIAL_LANGUAGES[task] if languages is None else languages)
    if not langs:
        raise Veco2Error(f"{task}: no languages to aggregate over")
    missing = [lang for lang in langs if lang not in per_language]
    if missing:
        raise Veco2Error(f"{task}: results missing for language(s) {' '.join(missing)}")
    ignored = sorted(set(per_language) - set(langs))
    if ignored:
        log.info("%s: languages %s are not in the aggregated list and are left out", task, " ".join(ignored))

    required = TASK_METRICS[task]
    for lang in langs:
        lacking = [m for m in required if m not in per_language[lang]]
        if lacking:
            raise Veco2Error(f"{task}: language {lang} has no {' '.join(lacking)} score")
    metrics = [m for m in per_language[langs[0]]]
    means: dict[str, float] = {}
    for metric in metrics:
        if not all(metric in per_language[lang] for lang in langs):
            log.warning("%s: metric %s is not reported for every language; not averaged", task, metric)
            continue
        values = [float(per_language[lang][metric]) for lang in langs]
        if not all(math.isfinite(v) for v in values):
            raise Veco2Error(f"{task}: non-finite {metric} value in {values}")
        means[metric] = sum(values) / len(values)
    means["score"] = sum(means[m] for m in required) / len(required)
    return means


def _score_of(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return float(value["score"])
    return float(value)


def xtreme_score(task_scores: Mapping[str, float | Mapping[str, float] | None], *, allow_missing: bool = False) -> dict:
    """Category scores and the XTREME score from per-task scores.

    Args:
        task_scores: ``{task: score}`` or ``{task: task_score(...) dict}``.
        allow_missing: if False (default) a missing task is an error; if True the XTREME score
            and the categories with a missing task are ``None`` and the missing tasks are listed.

    Returns:
        ``{"tasks": {task: score}, "categories": {category: mean of its tasks or None},
        "xtreme": mean of the 9 task scores or None, "missing": [tasks]}``.
    """
    unknown = sorted(set(task_scores) - set(TASKS))
    if unknown:
        raise Veco2Error(f"unknown XTREME task(s) {' '.join(unknown)}; tasks: {', '.join(TASKS)}")
    tasks = {t: _score_of(task_scores[t]) for t in TASKS if _score_of(task_scores.get(t)) is not None}
    missing = [t for t in TASKS if t not in tasks]
    if missing and not allow_missing:
        raise Veco2Error(f"XTREME score needs all 9 tasks; missing: {' '.join(missing)}")
    categories = {
        c: (sum(tasks[t] for t in members) / len(members) if all(t in tasks for t in members) else None)
        for c, members in TASK_CATEGORIES.items()
    }
    xtreme = sum(tasks.values()) / len(TASKS) if not missing else None
    return {"tasks": tasks, "categories": categories, "xtreme": xtreme, "missing": missing}


# ---------------------------------------------------------------------------------------------
# Results tree
# ---------------------------------------------------------------------------------------------

_SEED_DIR = re.compile(r"^seed(\d+)$")
RESULT_COLUMNS = ["variant", "task", "seed", "language", "metric", "value"]


def _read_results_file(path: Path, variant: str, task: str, seed: int) -> list[dict]:
    """The long-table rows of one results.json (checked by :meth:`RunResult.read`)."""
    result = RunResult.read(path, task=task, seed=seed)
    return [dict(variant=variant, task=task, seed=seed, language=lang, metric=metric, value=float(value))
            for lang, metrics in result.scores.items() for metric, value in metrics.items()]


def load_results_tree(root: str | Path) -> pd.DataFrame:
    """Read every ``root/{variant}/{task}/seed{S}/results.json`` into a long table with columns
    ``variant, task, seed (int), language, metric, value``.

    Corrupt or inconsistent files raise :class:`InputError` naming the file; directories that
    do not fit the layout (unknown task, not ``seed<N>``) are skipped with a logged warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, None, "results directory not found")
    rows: list[dict] = []
    for path in sorted(root.glob("*/*/*/results.json")):
        seed_dir, task, variant = path.parent.name, path.parent.parent.name, path.parent.parent.parent.name
        match = _SEED_DIR.match(seed_dir)
        if task not in TASK_METRICS or not match:
            log.warning("skipping %s: not {variant}/{task}/seed<N>/results.json with a known task", path)
            continue
        rows.extend(_read_results_file(path, variant, task, int(match.group(1))))
    if not rows:
        raise InputError(root, None, "no {variant}/{task}/seed<N>/results.json files found")
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def summarise(
    df: pd.DataFrame,
    *,
    languages: Mapping[str, Sequence[str]] | None = None,
    ddof: int = 1,
    allow_missing: bool = False,
) -> pd.DataFrame:
    """Mean and standard deviation over seeds of task, category and XTREME scores.

    Args:
        df: the long table of :func:`load_results_tree`.
        languages: per-task language lists to aggregate over (default: official lists; a task
            absent from the mapping uses its official list).
        ddof: 1 (default) = sample standard deviation over seeds, pandas' default; with a
            single seed the std is NaN (look at ``n_seeds``).  0 = population std.
        allow_missing: passed to :func:`xtreme_score` (a variant without all 9 tasks).

    Returns:
        rows ``variant, level ("task" | "category" | "xtreme"), name, mean, std, n_seeds``.
        Per-seed category / XTREME scores use every fine-tuning seed; a retrieval task with a
        single seed (seed0, deterministic) contributes the same value to each of them.
    """
    languages = dict(languages or {})
    rows = []
    for variant, vdf in df.groupby("variant", sort=True):
        per_seed: dict[str, dict[int, float]] = {}
        groups = vdf.groupby(["task", "seed"], sort=True)
        for task, seed in sorted(groups.groups, key=_in_task_order):  # errors name the first task
            sdf = groups.get_group((task, seed))
            per_language = {
                lang: dict(zip(ldf["metric"], ldf["value"])) for lang, ldf in sdf.groupby("language", sort=False)
            }
            try:
                score = task_score(per_language, task, languages=languages.get(task))["score"]
            except Veco2Error as err:
                raise Veco2Error(f"{variant} seed{seed}: {err}") from None
            per_seed.setdefault(task, {})[seed] = score
        for task in TASKS:
            if task in per_seed:
                rows.append(_stat_row(variant, "task", task, list(per_seed[task].values()), ddof))
        # Per-seed overall scores: seeds of the fine-tuned tasks; seed-independent tasks broadcast.
        seed_free = {t for t, by_seed in per_seed.items() if t in RETRIEVAL_TASKS and len(by_seed) == 1}
        seeds = sorted({s for t, by_seed in per_seed.items() if t not in seed_free for s in by_seed})
        seeds = seeds or sorted({s for by_seed in per_seed.values() for s in by_seed})
        overall = []
        for seed in seeds:
            scores = {
                task: next(iter(by_seed.values())) if task in seed_free else by_seed[seed]
                for task, by_seed in per_seed.items()
                if task in seed_free or seed in by_seed
            }
            try:
                overall.append(xtreme_score(scores, allow_missing=allow_missing))
            except Veco2Error as err:
                raise Veco2Error(f"{variant} seed{seed}: {err}") from None
        for category in CATEGORIES:
            values = [o["categories"][category] for o in overall if o["categories"][category] is not None]
            if values:
                rows.append(_stat_row(variant, "category", category, values, ddof))
        values = [o["xtreme"] for o in overall if o["xtreme"] is not None]
        if values:
            rows.append(_stat_row(variant, "xtreme", "xtreme", values, ddof))
    return pd.DataFrame(rows, columns=["variant", "level", "name", "mean", "std", "n_seeds"])


def _in_task_order(task_seed: tuple[str, int]) -> tuple[int, int]:
    task, seed = task_seed
    return (TASKS.index(task) if task in TASKS else len(TASKS), seed)


def _stat_row(variant: str, level: str, name: str, values: list[float], ddof: int) -> dict:
    series = pd.Series(values, dtype=float)
    return dict(variant=variant, level=level, name=name, mean=series.mean(), std=series.std(ddof=ddof),
                n_seeds=len(values))  # fmt: skip

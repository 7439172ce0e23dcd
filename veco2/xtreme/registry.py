"""The XTREME task registry: one YAML file per task in ``veco2/xtreme/tasks/``.

A task file is data, not code: what the task is (category, family, metric, head, labels), its test
languages, the official fine-tuning hyper-parameters (google-research/xtreme scripts), its files in
the local layout and its hub configs.  The aggregation's lists, the workflow's jobs and the report's
columns are derived from these files; ``$VECO2_TASK_DIRS`` adds task files from outside the package.
Keys of a task file: ``docs/xtreme.md#task-registry``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import Veco2Error
from ..fileio import load_yaml

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
FAMILIES = ("classification", "tagging", "qa", "retrieval")
HEADS = ("sequence_classification", "token_classification", "question_answering", "none")
REQUIRED_KEYS = ("name", "version", "category", "family", "languages", "label", "order", "score_keys", "metrics",
                 "head", "hyperparameters", "local", "hub")
CATEGORY_ORDER = ("classification", "structured_prediction", "question_answering", "retrieval")


@dataclass(frozen=True)
class TaskSpec:
    """One XTREME task as described by its YAML file (the keys: docs/xtreme.md#task-registry)."""

    name: str
    version: int
    category: str
    family: str
    languages: tuple[str, ...]
    label: str
    order: int
    score_keys: tuple[str, ...]
    metrics: tuple[str, ...]
    head: str
    hyperparameters: dict[str, Any]
    local: dict[str, Any]
    hub: dict[str, Any]
    labels: tuple[str, ...] = ()
    train_language: str | None = "en"
    language_codes: dict[str, str] = field(default_factory=dict)
    train_source: str = ""
    description: str = ""
    path: str = ""

    @property
    def metric(self) -> str:
        """The primary metric (the first listed)."""
        return self.metrics[0]

    def code(self, lang: str) -> str:
        """The code or name the data files/hub configs use for ``lang`` (``de`` -> ``deu`` for Tatoeba)."""
        return self.language_codes.get(lang, lang)

    def check_language(self, lang: str) -> str:
        """Return ``lang`` if the task is scored on it, else raise a Veco2Error listing the allowed ones."""
        if lang not in self.languages and lang != self.train_language:
            raise Veco2Error(f"task {self.name!r} has no language {lang!r}; "
                             f"its languages are: {' '.join(self.languages)}")
        return lang

    def check_languages(self, languages) -> tuple[str, ...]:
        return tuple(self.check_language(lang) for lang in languages)


def _parse(path: Path) -> TaskSpec:
    raw = load_yaml(path)  # strict: duplicate keys and non-finite numbers are errors naming the line
    if not isinstance(raw, dict):
        raise Veco2Error(f"{path}: a task file must be a YAML mapping")
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise Veco2Error(f"{path}: missing key(s) {', '.join(missing)}")
    if raw["name"] != path.stem:
        raise Veco2Error(f"{path}: name {raw['name']!r} must equal the file name {path.stem!r}")
    if not isinstance(raw["version"], int):
        raise Veco2Error(f"{path}: version must be an integer, got {raw['version']!r}")
    if raw["family"] not in FAMILIES:
        raise Veco2Error(f"{path}: family {raw['family']!r} is not one of {', '.join(FAMILIES)}")
    if raw["head"] not in HEADS:
        raise Veco2Error(f"{path}: head {raw['head']!r} is not one of {', '.join(HEADS)}")
    if raw["category"] not in CATEGORY_ORDER:
        raise Veco2Error(f"{path}: category {raw['category']!r} is not one of {', '.join(CATEGORY_ORDER)}")
    for key in ("languages", "score_keys"):
        if not isinstance(raw[key], list) or not raw[key] or not all(isinstance(v, str) for v in raw[key]):
            raise Veco2Error(f"{path}: {key} must be a non-empty list of names")
    if not isinstance(raw["order"], int) or isinstance(raw["order"], bool):
        raise Veco2Error(f"{path}: order must be an integer, got {raw['order']!r}")
    languages = tuple(raw["languages"])
    known = set(raw)
    allowed = set(REQUIRED_KEYS) | {"labels", "train_language", "language_codes", "train_source",
                                    "description"}
    if known - allowed:
        raise Veco2Error(f"{path}: unknown key(s) {', '.join(sorted(known - allowed))}")
    return TaskSpec(
        name=raw["name"], version=raw["version"], category=raw["category"], family=raw["family"],
        languages=languages, label=str(raw["label"]), order=raw["order"], score_keys=tuple(raw["score_keys"]),
        metrics=tuple(raw["metrics"]), head=raw["head"],
        hyperparameters=dict(raw["hyperparameters"] or {}), local=dict(raw["local"]),
        hub=dict(raw["hub"] or {}), labels=tuple(raw.get("labels") or ()),
        train_language=raw.get("train_language", "en"),
        language_codes={str(k): str(v) for k, v in (raw.get("language_codes") or {}).items()},
        train_source=raw.get("train_source", ""), description=raw.get("description", ""),
        path=str(path))


def task_dirs() -> list[Path]:
    """The packaged task directory, then every directory of ``$VECO2_TASK_DIRS``."""
    extra = [Path(p) for p in os.environ.get("VECO2_TASK_DIRS", "").split(os.pathsep) if p]
    for directory in extra:
        if not directory.is_dir():
            raise Veco2Error(f"VECO2_TASK_DIRS: {directory} is not a directory")
    return [TASKS_DIR, *extra]


def _load_all() -> dict[str, TaskSpec]:
    return _load_dirs(tuple(task_dirs()))


@lru_cache(maxsize=None)
def _load_dirs(directories: tuple[Path, ...]) -> dict[str, TaskSpec]:
    tasks: dict[str, TaskSpec] = {}
    for directory in directories:
        for path in sorted(directory.glob("*.yaml")):
            if path.stem in tasks:
                raise Veco2Error(f"{path}: task {path.stem!r} is already defined by {tasks[path.stem].path}")
            tasks[path.stem] = _parse(path)
    orders = sorted(t.order for t in tasks.values())
    if len(set(orders)) != len(orders):
        raise Veco2Error(f"task files: two tasks share an `order` ({orders})")
    # the tables' order: by category (the XTREME paper's), then `order`
    return dict(sorted(tasks.items(), key=lambda kv: (CATEGORY_ORDER.index(kv[1].category), kv[1].order)))


def list_tasks() -> list[str]:
    """Registered task names, in the tables' order (category, then ``order``)."""
    return list(_load_all())


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; an unknown name raises a Veco2Error listing the known tasks."""
    if isinstance(name, TaskSpec):
        return name
    tasks = _load_all()
    if name not in tasks:
        raise Veco2Error(f"unknown XTREME task {name!r}; known tasks: {', '.join(sorted(tasks))}")
    return tasks[name]

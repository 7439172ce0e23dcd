"""The XTREME task registry: one YAML file per task in ``veco2/xtreme/tasks/``.

A task file is data, not code.  It says what the task is (category, family, metric, head, labels),
which languages it is scored on, the official fine-tuning hyper-parameters, where its files live in
the local (official-format) layout and which Hugging Face hub configs hold it.  Adding a task means
adding one YAML file (plus a loader in :mod:`veco2.xtreme.data` only when its file format is new).

Keys of a task file (all required unless marked optional):

``name``            registry name (``xnli``, ``pawsx``, ``udpos``, ``panx``, ``xquad``, ``mlqa``,
                    ``tydiqa``, ``bucc2018``, ``tatoeba``).
``version``         integer, bumped whenever data handling or scoring changes; recorded in every result.
``category``        XTREME category (classification, structured_prediction, question_answering, retrieval).
``family``          engine family: ``classification`` | ``tagging`` | ``qa`` | ``retrieval``.
``languages``       ``official`` (= ``aggregate.OFFICIAL_LANGUAGES[name]``, not repeated here) or a list.
``train_language``  the language of the training and model-selection data (``en``; none for retrieval).
``metrics``         metric names from ``metrics.METRICS``; the first is the task's primary metric.
``head``            ``sequence_classification`` | ``token_classification`` | ``question_answering`` | ``none``.
``labels``          label list (classification / tagging), in the order of the head's outputs.
``hyperparameters`` official defaults (google-research/xtreme scripts); a run's overrides go on top.
``language_codes``  optional: our code -> the code/name the data uses (``udpos.German``, ``tatoeba.deu``).
``local``           ``dir``, ``format`` (loader name) and per-split file templates with ``{lang}`` /
                    ``{code}`` placeholders; ``dev: null`` means there is no English dev set.
``hub``             per split: ``path``, ``name`` (config, same placeholders), ``split`` and optional
                    ``filter`` (column or id-prefix the hub mixes languages on).
``train_source``    optional, human-readable: where the English training data comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from ..errors import Veco2Error

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
FAMILIES = ("classification", "tagging", "qa", "retrieval")
HEADS = ("sequence_classification", "token_classification", "question_answering", "none")
REQUIRED_KEYS = ("name", "version", "category", "family", "languages", "metrics", "head",
                 "hyperparameters", "local", "hub")


@dataclass(frozen=True)
class TaskSpec:
    """One XTREME task as described by its YAML file (see the module docstring for the keys)."""

    name: str
    version: int
    category: str
    family: str
    languages: tuple[str, ...]
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


def _official_languages(name: str) -> tuple[str, ...]:
    from .aggregate import OFFICIAL_LANGUAGES  # the one list of official languages per task

    if name not in OFFICIAL_LANGUAGES:
        raise Veco2Error(f"task {name!r}: 'languages: official' but aggregate.OFFICIAL_LANGUAGES "
                         f"has no entry for it (known: {', '.join(sorted(OFFICIAL_LANGUAGES))})")
    return tuple(OFFICIAL_LANGUAGES[name])


def _parse(path: Path) -> TaskSpec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        from ..errors import InputError
        raise InputError(path, None if line is None else line + 1, f"bad YAML: {err}") from None
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
    languages = raw["languages"]
    languages = _official_languages(raw["name"]) if languages == "official" else tuple(languages)
    known = set(raw)
    allowed = set(REQUIRED_KEYS) | {"labels", "train_language", "language_codes", "train_source",
                                    "description"}
    if known - allowed:
        raise Veco2Error(f"{path}: unknown key(s) {', '.join(sorted(known - allowed))}")
    return TaskSpec(
        name=raw["name"], version=raw["version"], category=raw["category"], family=raw["family"],
        languages=languages, metrics=tuple(raw["metrics"]), head=raw["head"],
        hyperparameters=dict(raw["hyperparameters"] or {}), local=dict(raw["local"]),
        hub=dict(raw["hub"] or {}), labels=tuple(raw.get("labels") or ()),
        train_language=raw.get("train_language", "en"),
        language_codes={str(k): str(v) for k, v in (raw.get("language_codes") or {}).items()},
        train_source=raw.get("train_source", ""), description=raw.get("description", ""),
        path=str(path))


@lru_cache(maxsize=None)
def _load_all() -> dict[str, TaskSpec]:
    return {path.stem: _parse(path) for path in sorted(TASKS_DIR.glob("*.yaml"))}


def list_tasks() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_load_all())


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; an unknown name raises a Veco2Error listing the known tasks."""
    if isinstance(name, TaskSpec):
        return name
    tasks = _load_all()
    if name not in tasks:
        raise Veco2Error(f"unknown XTREME task {name!r}; known tasks: {', '.join(sorted(tasks))}")
    return tasks[name]

"""``results.json``: the record of one XTREME run (one task, one seed), shared by its writers
(:func:`veco2.xtreme.finetune.run_finetune`, :func:`veco2.xtreme.retrieval_run.run_evaluate`) and its
reader (:func:`veco2.xtreme.aggregate.load_results_tree`).

:class:`RunResult` holds the keys both writers put there, in the order they appear in the file.
Only ``task``, ``languages``, ``seed`` and ``scores`` are required; a key a writer does not record
(the fine-tuning ``selection`` of a retrieval run, the ``layer`` of a fine-tuning run, ...) stays
:data:`NOT_RECORDED` and is left out of the file.  Keys of no field (files of older versions)
are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fileio import read_json, write_json


class _NotRecorded:
    """The value of a field that the file does not hold (distinct from a recorded ``null``)."""

    def __repr__(self) -> str:
        return "NOT_RECORDED"


NOT_RECORDED: Any = _NotRecorded()

#: The keys every results.json holds (what the aggregation reads).
REQUIRED_KEYS = ("task", "languages", "seed", "scores")


@dataclass(kw_only=True)
class RunResult:
    """One run's results.json (the module docstring says which keys are optional)."""

    task: str
    """Registry name of the task."""
    version: int = NOT_RECORDED
    """The task file's ``version`` (bumped when data handling or scoring changes)."""
    languages: list[str]
    """The test languages the task score averages over."""
    seed: int
    """Fine-tuning seed; 0 for retrieval (``aggregate.RETRIEVAL_SEED``)."""
    scores: dict[str, dict[str, float]]
    """``{language: {metric: value}}``, percent."""
    task_score: float = NOT_RECORDED
    """The task score (:func:`veco2.xtreme.aggregate.task_score`)."""
    task_means: dict[str, float] = NOT_RECORDED
    """Every metric's mean over ``languages``, and ``score``."""
    language_subset: bool = NOT_RECORDED
    """Fine-tuning: ``languages`` is a declared subset of the official list (demo data)."""
    selection: dict[str, Any] = NOT_RECORDED
    """Fine-tuning: checkpoint selection (``on``, ``best_step``, ``best_dev_score``, ``steps``, ``history``)."""
    layer: int = NOT_RECORDED
    """Retrieval: the hidden layer of the headline ``scores``."""
    num_hidden_layers: int = NOT_RECORDED
    """Retrieval: the encoder's depth."""
    pooling: str = NOT_RECORDED
    """Retrieval: ``mean`` or ``cls``."""
    scores_by_layer: dict[str, dict] | None = NOT_RECORDED
    """Retrieval: ``{layer: {language: {metric: value}}}`` of a layer sweep, else null."""
    task_score_by_layer: dict[str, float] | None = NOT_RECORDED
    """Retrieval: ``{layer: task score}`` of a layer sweep, else null."""
    bucc_thresholds: dict[str, float] | None = NOT_RECORDED
    """Retrieval (BUCC): the margin threshold chosen on dev, per language, else null."""
    hyperparameters: dict[str, Any] = NOT_RECORDED
    """The resolved settings of the run."""
    model: dict[str, Any] = NOT_RECORDED
    """The pre-trained model's identity (:func:`veco2.xtreme.finetune.model_identity`)."""
    data: dict[str, Any] = NOT_RECORDED
    """Where the data came from (``source``, ``root``, ``demo``; fine-tuning: ``translate_train``)."""
    n_train_examples: int = NOT_RECORDED
    """Fine-tuning: training examples used."""
    n_train_features: int = NOT_RECORDED
    """Fine-tuning: training features (windows) they gave."""
    execution: dict[str, Any] = NOT_RECORDED
    """Device, peak GPU memory and (fine-tuning) processes, micro-batch, mixed precision."""
    wall_seconds: float = NOT_RECORDED
    """Wall time of the run."""
    run_hash: str = NOT_RECORDED
    """Hash of the settings that determine the result (a rerun with the same hash is skipped)."""
    provenance: dict[str, Any] = NOT_RECORDED
    """Code version, environment and the hashed run configuration (:func:`veco2.provenance.provenance`)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys of no field above, kept as read."""

    def to_json(self) -> dict[str, Any]:
        """The results.json object: the recorded fields in order, then ``extra``."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**{k: v for k, v in record.items() if v is not NOT_RECORDED}, **self.extra}

    def write(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path`` atomically."""
        write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def read(cls, path: str | Path, *, task: str | None = None, seed: int | None = None) -> RunResult:
        """Read and check ``path``; ``task`` / ``seed``: the values its directory names.

        Raises :class:`InputError` naming the file when it is not an object, lacks a required key,
        disagrees with ``task`` or ``seed``, misses a declared language's scores or holds a score
        that is not a finite number.
        """
        path = Path(path)
        data = read_json(path)
        if not isinstance(data, dict):
            raise InputError(path, None, "results.json must hold a JSON object")
        for key in REQUIRED_KEYS:
            if key not in data:
                raise InputError(path, None, f"missing key {key!r}")
        if task is not None and data["task"] != task:
            raise InputError(path, None, f"task {data['task']!r} does not match its directory {task!r}")
        if seed is not None and data["seed"] != seed:
            raise InputError(path, None, f"seed {data['seed']!r} does not match its directory seed{seed}")
        scores = data["scores"]
        if not isinstance(scores, dict):
            raise InputError(path, None, "'scores' must map language -> {metric: value}")
        missing = [lang for lang in list(data["languages"]) if lang not in scores]
        if missing:
            raise InputError(path, None, f"declared language(s) without scores: {' '.join(missing)}")
        for lang, metrics in scores.items():
            if not isinstance(metrics, dict):
                raise InputError(path, None, f"scores[{lang!r}] must map metric -> value")
            for metric, value in metrics.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise InputError(path, None, f"scores[{lang!r}][{metric!r}] = {value!r} is not a finite number")
        return cls.from_json(data)


# ---------------------------------------------------------------------------------------------
# Per-example statistics beside results.json: what the report's paired bootstrap resamples
# ---------------------------------------------------------------------------------------------

#: The file beside each results.json with the per-example rows of every test language.
EXAMPLE_STATISTICS = "example_statistics.json"


def check_statistics(statistics, scores: dict[str, float], where: str) -> None:
    """The summed rows must give the scores the scorer reported: a mismatch is a bug, not a result."""
    for name, value in statistics.score().items():
        if name in scores and not math.isclose(value, scores[name], rel_tol=1e-9, abs_tol=1e-9):
            raise AssertionError(f"{where}: per-example {name} {value!r} != scored {scores[name]!r}")


def write_example_statistics(seed_dir: str | Path, statistics: dict) -> None:
    """``{lang: ExampleStatistics}`` to ``seed_dir/example_statistics.json`` (atomic; written before
    results.json, whose presence marks a finished run)."""
    write_json(Path(seed_dir) / EXAMPLE_STATISTICS,
               {"format_version": 1, "languages": {lang: stats.to_json() for lang, stats in statistics.items()}})


def read_example_statistics(seed_dir: str | Path) -> dict | None:
    """``{lang: ExampleStatistics}`` of one run, or None when the run has no such file (older runs)."""
    from .metrics import ExampleStatistics

    path = Path(seed_dir) / EXAMPLE_STATISTICS
    if not path.exists():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format_version") != 1 or not isinstance(data.get("languages"), dict):
        raise InputError(path, None, "not a veco2 example-statistics file (format_version 1)")
    try:
        return {lang: ExampleStatistics.from_json(entry) for lang, entry in data["languages"].items()}
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(path, None, f"malformed statistics ({err})") from None

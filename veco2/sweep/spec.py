"""The sweep file (``config/sweep/*.yaml``): its settings as dataclasses, loading and checks.

A sweep file is merged strictly into :class:`SweepSettings` (the defaults are the fields below;
unknown keys and bad types fail with the file and line, as for the run config), then checked:
value bounds, the search-space parameters (:func:`suggest` samples them) and that every searched
key and value is accepted by the pre-training config.  Every key is described in docs/sweeps.md.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import Config, _key_lines, load_config, merge_into, read_yaml
from ..errors import ConfigError
from ..provenance import config_hash

log = logging.getLogger(__name__)


def _at_least(default: Any, minimum: float) -> Any:
    return field(default=default, metadata={"minimum": minimum})


def _above(default: Any, bound: float) -> Any:
    return field(default=default, metadata={"above": bound})


# ----------------------------------------------------------------------------------------------
# Settings (a field annotated ``dict`` is a free-form mapping, taken as given)


@dataclass
class PretrainSettings:
    configs: list[str] = field(default_factory=list)
    """The scale's pre-training config file(s) (``config/pretrain/SCALE.yaml``), in merge order."""
    ablation: str | None = None
    """The ablation variant every trial trains; ``best.yaml`` is this file with the tuned keys set."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """``key.path: value`` overrides of the pre-training config (the start run and every trial)."""


@dataclass
class StartSettings:
    steps: int = _at_least(100, 0)
    """Warm-start pre-training steps of the shared starting point (0: tokenizer and shards only)."""
    init_from: str | None = None
    """A Hugging Face model directory to start from (weights and tokenizer) instead."""
    overrides: dict[str, Any] = field(
        default_factory=lambda: {"objectives.seq.weight": 0.0, "objectives.tok.weight": 0.0})
    """Overrides of the start run only (default: MLM only, the contrastive terms switched off)."""


@dataclass
class TrialSettings:
    steps: int = _at_least(40, 1)
    """Pre-training steps of one trial, from the shared start."""
    report_every: int = _at_least(10, 1)
    """Steps between intermediate proxy reports (and pruning checks); at most ``steps``."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Overrides of every trial's pre-training config (not of the start run)."""
    keep_models: bool = True
    """Keep each COMPLETE trial's ``model/`` directory (for the full XTREME evaluation)."""


@dataclass
class ProxyWeights:
    """Weight of each proxy term, in the order the terms are computed (at least one > 0)."""

    retrieval: float = _at_least(0.5, 0)
    """Held-out dev-pair retrieval accuracy."""
    word_translation: float = _at_least(0.5, 0)
    """Dictionary word-translation accuracy from contextual embeddings."""
    xnli: float = _at_least(0.0, 0)
    """English dev accuracy of a quick XNLI fine-tune (slow: one fine-tune per trial)."""

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class XnliProxySettings:
    max_steps: int = _at_least(30, 1)
    """Fine-tuning steps of the XNLI term."""
    max_train_examples: int = _at_least(256, 1)
    """Training examples of the XNLI term (the first ones of the training set)."""
    batch_size: int = _at_least(16, 1)
    """Fine-tuning batch size of the XNLI term."""
    learning_rate: float = _above(5e-5, 0)
    """Fine-tuning learning rate of the XNLI term."""
    data_root: str | None = None
    """XTREME data directory (null: ``$VECO2_XTREME_DATA`` or the packaged demo data)."""


@dataclass
class ProxySettings:
    weights: ProxyWeights = field(default_factory=ProxyWeights)
    """The proxy is the weighted mean of the terms with a weight > 0."""
    pairs: int = _at_least(100, 2)
    """Dev pairs per language for the retrieval and word-translation terms."""
    xnli: XnliProxySettings = field(default_factory=XnliProxySettings)
    """The quick fine-tune of the ``xnli`` term."""


@dataclass
class SamplerSettings:
    seed: int = 0
    """Seed of the TPE sampler (one worker, same file: the same trials)."""
    n_startup_trials: int = _at_least(4, 0)
    """Random trials before TPE takes over."""
    multivariate: bool = False
    """Multivariate TPE (models the parameters jointly)."""


@dataclass
class PrunerSettings:
    type: Literal["median", "hyperband", "none"] = "median"
    """``median`` (MedianPruner), ``hyperband`` (HyperbandPruner over training steps) or ``none``."""
    n_startup_trials: int = _at_least(2, 0)
    """median: trials that finish before any is pruned."""
    n_warmup_steps: int = _at_least(0, 0)
    """median: no pruning at reports before this step."""
    min_resource: int = _at_least(1, 1)
    """hyperband: steps every trial runs at least."""
    reduction_factor: int = _at_least(3, 2)
    """hyperband: the reduction factor between its rungs."""


@dataclass
class StorageSettings:
    heartbeat_interval: int = _at_least(10, 1)
    """Seconds between heartbeats of a running trial."""
    grace_period: int = _at_least(60, 1)
    """Seconds without a heartbeat after which a RUNNING trial is failed and re-enqueued."""
    max_retry: int = _at_least(2, 0)
    """Re-enqueues of one failed stale trial at most."""
    max_failures: int = _at_least(3, 1)
    """Failed trials in a row that stop a worker."""


@dataclass
class SweepSettings:
    """Every setting of a sweep file; a sweep YAML overrides them key by key."""

    name: str = "sweep"
    """Name of the sweep definition (the study name is given by ``--study``)."""
    description: str = ""
    """One line on what the sweep searches."""
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    """The pre-training config of the start run and of every trial."""
    start: StartSettings = field(default_factory=StartSettings)
    """The shared starting point, built once per study."""
    trial: TrialSettings = field(default_factory=TrialSettings)
    """One trial's short pre-training run."""
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per pre-training config key: ``{low, high, log?, int?, step?}`` or ``{choices: [...]}``."""
    proxy: ProxySettings = field(default_factory=ProxySettings)
    """The cheap proxy evaluation the study maximises."""
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    """The TPE sampler."""
    pruner: PrunerSettings = field(default_factory=PrunerSettings)
    """The pruner of poor trials."""
    storage: StorageSettings = field(default_factory=StorageSettings)
    """Heartbeats, retries and failures of the study storage's workers."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# The sweep


@dataclass
class Sweep:
    """A validated sweep definition.  ``settings`` holds the merged file (defaults filled in);
    ``pretrain_overrides`` are extra ``key=value`` overrides of the pre-training config (command line)."""

    settings: SweepSettings
    source: str
    pretrain_overrides: tuple[str, ...] = ()

    def identity(self) -> str:
        """Hash of everything that defines the study's trials (the storage refuses a mismatch)."""
        return config_hash({"settings": self.settings.to_dict(), "pretrain_overrides": list(self.pretrain_overrides)})

    # -- configs of the start run and of one trial --------------------------------------------

    def _files(self) -> list[str]:
        pretrain = self.settings.pretrain
        return [*pretrain.configs, pretrain.ablation] if pretrain.ablation else list(pretrain.configs)

    def base_config(self, extra: dict | None = None) -> Config:
        overrides = [f"{k}={_yaml_scalar(v)}" for k, v in self.settings.pretrain.overrides.items()]
        overrides += list(self.pretrain_overrides)
        overrides += [f"{k}={_yaml_scalar(v)}" for k, v in (extra or {}).items()]
        return load_config(*self._files(), overrides=overrides)


def _yaml_scalar(value: Any) -> str:
    """A value written so that :func:`veco2.config.parse_override` reads it back unchanged."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


# ----------------------------------------------------------------------------------------------
# Loading and checks


def _split_free_form(section: type, updates: dict, prefix: str = "") -> tuple[dict, dict[str, Any]]:
    """(the typed part of ``updates``, {dotted key: value} of its free-form mappings).

    ``merge_into`` coerces every value to its field's type and has no type for an open mapping, so
    the fields annotated ``dict`` (overrides, space) are taken out and set after the merge.
    """
    hints = typing.get_type_hints(section)
    typed, free = {}, {}
    for key, value in updates.items():
        hint = hints.get(key)
        if typing.get_origin(hint) is dict:
            free[f"{prefix}{key}"] = value
        elif dataclasses.is_dataclass(hint) and isinstance(value, dict):
            typed[key], inner = _split_free_form(hint, value, f"{prefix}{key}.")
            free.update(inner)
        else:
            typed[key] = value  # unknown keys too: merge_into names them
    return typed, free


def _merge_settings(raw: dict, source: str, lines: dict[str, int]) -> SweepSettings:
    settings = SweepSettings()
    typed, free = _split_free_form(SweepSettings, raw)
    merge_into(settings, typed, source, lines=lines)
    for path, value in free.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{_at(source, lines, path)}: {path}: expected a mapping, got {value!r}")
        *parents, leaf = path.split(".")
        owner: Any = settings
        for part in parents:
            owner = getattr(owner, part)
        setattr(owner, leaf, value)
    return settings


def _at(source: str, lines: dict[str, int], path: str) -> str:
    return f"{source}:{lines[path]}" if path in lines else source


def _check_bounds(section: Any, source: str, lines: dict[str, int], prefix: str = "") -> None:
    """The ``minimum`` / ``above`` bounds in the fields' metadata."""
    for f in dataclasses.fields(section):
        path, value = f"{prefix}{f.name}", getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_bounds(value, source, lines, f"{path}.")
        elif "minimum" in f.metadata and value < f.metadata["minimum"]:
            raise ConfigError(f"{_at(source, lines, path)}: {path}: got {value!r}, must be >= {f.metadata['minimum']}")
        elif "above" in f.metadata and value <= f.metadata["above"]:
            raise ConfigError(f"{_at(source, lines, path)}: {path}: got {value!r}, must be > {f.metadata['above']}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_non_empty_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0


#: The keys a search-space parameter may have: what each must be, and its check.
_PARAM_TYPES = {"low": ("a number", _is_number), "high": ("a number", _is_number), "log": ("a boolean", _is_bool),
                "int": ("a boolean", _is_bool), "step": ("a number", _is_number),
                "choices": ("a non-empty list", _is_non_empty_list)}


def _check_param(param: Any, where: str) -> None:
    """One search-space parameter: ``{low, high, log?, int?, step?}`` or ``{choices: [...]}``."""
    if not isinstance(param, dict):
        raise ConfigError(f"{where}: expected {{low, high, ...}} or {{choices: [...]}}, got {param!r}")
    unknown = [k for k in param if k not in _PARAM_TYPES]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(_PARAM_TYPES)}")
    bounds = [k for k in ("low", "high") if k in param]
    if "choices" in param and bounds:
        raise ConfigError(f"{where}: give either choices or low and high, not both")
    if "choices" not in param and len(bounds) < 2:
        raise ConfigError(f"{where}: needs both low and high (or choices)")
    for name, value in param.items():
        expected, check = _PARAM_TYPES[name]
        if not check(value):
            raise ConfigError(f"{where}: {name}: got {value!r}, expected {expected}")
    if "step" in param and param["step"] <= 0:
        raise ConfigError(f"{where}: step: got {param['step']!r}, must be > 0")
    if "choices" not in param and param["low"] > param["high"]:
        raise ConfigError(f"{where}: low {param['low']} > high {param['high']}")
    if "choices" not in param and param.get("log") and param["low"] <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0")


def load_sweep(path: str | Path, pretrain_overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read and validate a sweep YAML; every search-space key must be a pre-training config key.

    Relative paths inside it (``pretrain.configs``, ``pretrain.ablation``, ``start.init_from``) are
    relative to the working directory (the repository root, as the Snakemake workflow runs).
    """
    raw = read_yaml(path)
    lines = _key_lines(Path(path).read_text(encoding="utf-8"))
    settings = _merge_settings(raw, str(path), lines)
    _check_bounds(settings, str(path), lines)
    sweep = Sweep(settings, str(path), tuple(pretrain_overrides))
    if not settings.space:
        raise ConfigError(f"{_at(str(path), lines, 'space')}: space: at least one parameter to search is required")
    trial = settings.trial
    if trial.report_every > trial.steps:
        raise ConfigError(f"{_at(str(path), lines, 'trial.report_every')}: trial.report_every ({trial.report_every}) "
                          f"exceeds trial.steps ({trial.steps})")
    if not any(weight > 0 for weight in settings.proxy.weights.as_dict().values()):
        raise ConfigError(f"{_at(str(path), lines, 'proxy.weights')}: proxy.weights: at least one weight must be > 0")
    if settings.start.steps == 0 and settings.start.overrides != StartSettings().overrides:
        log.info("%s: start.steps is 0, start.overrides only affect data preparation", path)
    sweep.base_config()  # the pre-training config itself must load
    # Every searched key must exist in the pre-training config and accept its values.
    for key, param in settings.space.items():
        where = f"{_at(str(path), lines, f'space.{key}')}: space.{key}"
        _check_param(param, where)
        values = param["choices"] if "choices" in param else [param["low"], param["high"]]
        for value in values:
            try:
                load_config(*sweep._files(), overrides=[f"{key}={_yaml_scalar(value)}"])
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
    return sweep


def suggest(trial, key: str, param: dict) -> Any:
    """Sample one parameter: ``{choices: [...]}`` categorical; ``{low, high, log?, step?}`` float,
    integer with ``int: true``."""
    if "choices" in param:
        return trial.suggest_categorical(key, param["choices"])
    if param.get("int"):
        return trial.suggest_int(key, int(param["low"]), int(param["high"]), step=int(param.get("step", 1)),
                                 log=param.get("log", False))
    return trial.suggest_float(key, float(param["low"]), float(param["high"]), step=param.get("step"),
                               log=param.get("log", False))

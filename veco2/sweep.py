"""Optuna sweeps over the unpublished VECO 2.0 settings (τ_seq, τ_tok, λ_seq, λ_tok, layers, ...).

The paper does not publish its temperatures or loss weights; a sweep finds them for this suite.

What one trial is
-----------------
1. **A shared starting point.**  Once per study (under ``OUT/start/``, built by whichever worker
   gets there first, under a file lock, resumable) the tokenizer and the pre-tokenized shards are
   built and -- with ``start.steps > 0`` -- a short warm-start pre-training runs (by default MLM
   only: ``start.overrides`` switches the contrastive terms off).  Every trial then initialises from
   the same weights (``model.init_from``), the same tokenizer (``data.tokenizer``, never retrained:
   the Unigram trainer is not bit-reproducible) and the same shards (``data.shard_dir``).
   ``start.init_from: DIR`` starts from a given Hugging Face model directory instead.
2. **A short pre-training run** of ``trial.steps`` steps with the sampled parameters and the fixed
   training seed ``pretrain`` config's ``training.seed`` (the same for every trial: batches, masks
   and dropout are then identical across trials, so trials differ by their parameters only).
3. **A cheap proxy evaluation**, each term in percent (0-100):

   - ``retrieval``: Tatoeba-style held-out retrieval accuracy on ``proxy.pairs`` dev pairs per
     language (``veco2.trainer.heldout_retrieval``, both directions averaged, the layer of
     ``evaluation.retrieval_layer``);
   - ``word_translation``: dictionary word-translation accuracy from contextual embeddings
     (:func:`word_translation_accuracy`);
   - ``xnli``: the English dev accuracy of a quick XNLI fine-tune (``veco2.xtreme.finetune``, a few
     steps on a slice of the training set).

   The proxy is the weighted mean  ``P = Σ_k w_k · s_k / Σ_k w_k``  over the terms with ``w_k > 0``
   (``proxy.weights``).  The study maximises ``P``.  The full XTREME evaluation of the best trials
   is a separate step (each COMPLETE trial keeps its ``model/`` directory).

Pruning: every ``trial.report_every`` steps the trial reports the *intermediate proxy* -- the same
weighted mean over the cheap terms (retrieval, word translation; the fine-tune is left out) on the
current weights -- and a median or Hyperband pruner may stop it (``optuna.TrialPruned``).  The
intermediate terms are computed inside the training run, on the live model, through the
trainer's ``on_log`` hook (``report_every`` must be a multiple of the trial's ``log_every``).

Reproducibility: the TPE sampler is seeded (``sampler.seed``), the pre-training seed is fixed, and
CPU training is deterministic, so the same sweep config run by one worker from scratch gives the
same sequence of trials (parameters and values).  With several workers, or after a resume, the
order in which results reach the sampler depends on timing and the sequence may differ.

Storage and workers: see :func:`open_storage`.  ``--trials N`` is a quota per *worker name*
(:func:`run_worker`): a worker runs trials until ``N`` trials recorded under its name have finished
(COMPLETE or PRUNED), so a crashed worker started again with the same name completes its quota
instead of starting a new one, and workers with distinct names add their quotas.  A trial whose
worker died is failed by the heartbeat check (``storage.grace_period`` seconds after its last
heartbeat) and re-enqueued with the same parameters (``storage.max_retry`` times at most).

Outputs in ``OUT`` (:func:`write_report`): ``best.yaml`` (an ablation file like
``ablations/*.yaml``), ``trials.csv``, ``plots/*.png|svg``, ``report.md``, ``trials/trial-NNNN/``.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import Config, load_config, read_yaml
from .errors import ConfigError, Veco2Error
from .fileio import append_jsonl, file_lock, write_json, write_text
from .provenance import config_hash

log = logging.getLogger(__name__)

#: Proxy terms, in the order they are computed.
PROXY_TERMS = ("retrieval", "word_translation", "xnli")
#: Terms cheap enough to compute at every intermediate report.
CHEAP_TERMS = ("retrieval", "word_translation")

# ----------------------------------------------------------------------------------------------
# The sweep definition (config/sweep/*.yaml)

_PARAM_SCHEMA = {
    "type": "object",
    "oneOf": [
        {"required": ["low", "high"], "not": {"required": ["choices"]}},
        {"required": ["choices"], "not": {"anyOf": [{"required": ["low"]}, {"required": ["high"]}]}},
    ],
    "properties": {
        "low": {"type": "number"}, "high": {"type": "number"}, "log": {"type": "boolean"},
        "int": {"type": "boolean"}, "step": {"type": "number", "exclusiveMinimum": 0},
        "choices": {"type": "array", "minItems": 1},
    },
    "additionalProperties": False,
}
_OVERRIDES_SCHEMA = {"type": "object"}

SWEEP_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "pretrain": {"type": "object", "additionalProperties": False, "properties": {
            "profile": {"type": "array", "items": {"type": "string"}},
            "ablation": {"type": ["string", "null"]},
            "overrides": _OVERRIDES_SCHEMA}},
        "start": {"type": "object", "additionalProperties": False, "properties": {
            "steps": {"type": "integer", "minimum": 0},
            "init_from": {"type": ["string", "null"]},
            "overrides": _OVERRIDES_SCHEMA}},
        "trial": {"type": "object", "additionalProperties": False, "properties": {
            "steps": {"type": "integer", "minimum": 1},
            "report_every": {"type": "integer", "minimum": 1},
            "overrides": _OVERRIDES_SCHEMA,
            "keep_models": {"type": "boolean"}}},
        "space": {"type": "object", "minProperties": 1, "additionalProperties": _PARAM_SCHEMA},
        "proxy": {"type": "object", "additionalProperties": False, "properties": {
            "weights": {"type": "object", "additionalProperties": False,
                        "properties": {t: {"type": "number", "minimum": 0} for t in PROXY_TERMS}},
            "pairs": {"type": "integer", "minimum": 2},
            "xnli": {"type": "object", "additionalProperties": False, "properties": {
                "max_steps": {"type": "integer", "minimum": 1},
                "max_train_examples": {"type": "integer", "minimum": 1},
                "batch_size": {"type": "integer", "minimum": 1},
                "learning_rate": {"type": "number", "exclusiveMinimum": 0},
                "data_root": {"type": ["string", "null"]}}}}},
        "sampler": {"type": "object", "additionalProperties": False, "properties": {
            "seed": {"type": "integer"},
            "n_startup_trials": {"type": "integer", "minimum": 0},
            "multivariate": {"type": "boolean"}}},
        "pruner": {"type": "object", "additionalProperties": False, "properties": {
            "type": {"enum": ["median", "hyperband", "none"]},
            "n_startup_trials": {"type": "integer", "minimum": 0},
            "n_warmup_steps": {"type": "integer", "minimum": 0},
            "min_resource": {"type": "integer", "minimum": 1},
            "reduction_factor": {"type": "integer", "minimum": 2}}},
        "storage": {"type": "object", "additionalProperties": False, "properties": {
            "heartbeat_interval": {"type": "integer", "minimum": 1},
            "grace_period": {"type": "integer", "minimum": 1},
            "max_retry": {"type": "integer", "minimum": 0},
            "max_failures": {"type": "integer", "minimum": 1}}},
    },
}

#: Documented defaults of every sweep setting (a sweep YAML overrides them key by key).
SWEEP_DEFAULTS: dict[str, Any] = {
    "name": "sweep",
    "description": "",
    "pretrain": {"profile": [], "ablation": None, "overrides": {}},
    "start": {"steps": 100, "init_from": None,
              "overrides": {"objectives.seq.weight": 0.0, "objectives.tok.weight": 0.0}},
    "trial": {"steps": 40, "report_every": 10, "overrides": {}, "keep_models": True},
    "space": {},
    "proxy": {"weights": {"retrieval": 0.5, "word_translation": 0.5, "xnli": 0.0}, "pairs": 100,
              "xnli": {"max_steps": 30, "max_train_examples": 256, "batch_size": 16, "learning_rate": 5e-5,
                       "data_root": None}},
    "sampler": {"seed": 0, "n_startup_trials": 4, "multivariate": False},
    "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0, "min_resource": 1,
               "reduction_factor": 3},
    "storage": {"heartbeat_interval": 10, "grace_period": 60, "max_retry": 2, "max_failures": 3},
}


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("overrides", "space"):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Sweep:
    """A validated sweep definition.  ``settings`` holds the merged YAML (defaults filled in);
    ``pretrain_overrides`` are extra ``key=value`` overrides of the pre-training config (command line)."""

    settings: dict
    source: str
    pretrain_overrides: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    def identity(self) -> str:
        """Hash of everything that defines the study's trials (the storage refuses a mismatch)."""
        return config_hash({"settings": self.settings, "pretrain_overrides": list(self.pretrain_overrides)})

    # -- configs of the start run and of one trial --------------------------------------------

    def _files(self) -> list[str]:
        files = list(self["pretrain"]["profile"])
        if self["pretrain"]["ablation"]:
            files.append(self["pretrain"]["ablation"])
        return files

    def base_config(self, extra: dict | None = None) -> Config:
        overrides = [f"{k}={_yaml_scalar(v)}" for k, v in self["pretrain"]["overrides"].items()]
        overrides += list(self.pretrain_overrides)
        overrides += [f"{k}={_yaml_scalar(v)}" for k, v in (extra or {}).items()]
        return load_config(*self._files(), overrides=overrides)


def _yaml_scalar(value: Any) -> str:
    """A value written so that :func:`veco2.config.parse_override` reads it back unchanged."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def load_sweep(path: str | Path, pretrain_overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read and validate a sweep YAML; every search-space key must be a pre-training config key.

    Relative paths inside it (``pretrain.profile``, ``pretrain.ablation``, ``start.init_from``) are
    relative to the working directory (the repository root, as the Snakemake workflow runs).
    """
    import jsonschema

    raw = read_yaml(path)
    try:
        jsonschema.validate(raw, SWEEP_SCHEMA)
    except jsonschema.ValidationError as err:
        where = ".".join(str(p) for p in err.absolute_path) or "top level"
        raise ConfigError(f"{path}: {where}: {err.message}") from None
    settings = _deep_merge(SWEEP_DEFAULTS, raw)
    sweep = Sweep(settings, str(path), tuple(pretrain_overrides))
    if not settings["space"]:
        raise ConfigError(f"{path}: space: at least one parameter to search is required")
    trial = settings["trial"]
    if trial["report_every"] > trial["steps"]:
        raise ConfigError(f"{path}: trial.report_every ({trial['report_every']}) exceeds trial.steps ({trial['steps']})")
    if not any(settings["proxy"]["weights"].get(t, 0) > 0 for t in PROXY_TERMS):
        raise ConfigError(f"{path}: proxy.weights: at least one weight must be > 0")
    if settings["start"]["steps"] == 0 and settings["start"]["overrides"] != SWEEP_DEFAULTS["start"]["overrides"]:
        log.info("%s: start.steps is 0, start.overrides only affect data preparation", path)
    # Every searched key must exist in the pre-training config and accept its values.
    base = sweep.base_config()
    for key, spec in settings["space"].items():
        values = spec["choices"] if "choices" in spec else [spec["low"], spec["high"]]
        if "choices" not in spec and spec["low"] > spec["high"]:
            raise ConfigError(f"{path}: space.{key}: low {spec['low']} > high {spec['high']}")
        if "choices" not in spec and spec.get("log") and spec["low"] <= 0:
            raise ConfigError(f"{path}: space.{key}: a log scale needs low > 0")
        for value in values:
            try:
                load_config(*sweep._files(), overrides=[f"{key}={_yaml_scalar(value)}"])
            except ConfigError as err:
                raise ConfigError(f"{path}: space.{key}: {err}") from None
    del base
    return sweep


def suggest(trial, key: str, spec: dict) -> Any:
    """Sample one parameter: ``{choices: [...]}`` categorical; ``{low, high, log?, step?}`` float,
    integer with ``int: true``."""
    if "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    if spec.get("int"):
        return trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                 log=spec.get("log", False))
    return trial.suggest_float(key, float(spec["low"]), float(spec["high"]), step=spec.get("step"),
                               log=spec.get("log", False))


# ----------------------------------------------------------------------------------------------
# Storage, sampler, pruner


def _heartbeat_journal_storage_class():
    """``JournalStorage`` with Optuna's heartbeat protocol (Optuna 5 implements it for RDB only).

    The heartbeat is a trial system attribute ``veco2:heartbeat`` (seconds since the epoch), written
    every ``heartbeat_interval`` seconds by Optuna's heartbeat thread while the trial runs.  A RUNNING
    trial is *stale* when ``max(heartbeat, start time)`` is older than ``grace_period`` seconds; the
    next ``study.optimize`` of any worker fails it and calls the stale-trial callback (retry), as it
    does for RDB storages.  Clocks of all workers must agree (one machine: the journal file case).
    """
    from optuna.storages import JournalStorage
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.trial import TrialState

    class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
        def __init__(self, backend, heartbeat_interval: int, grace_period: int, stale_trial_callback=None):
            super().__init__(backend)
            self._heartbeat_interval = heartbeat_interval
            self._grace_period = grace_period
            self._stale_trial_callback = stale_trial_callback

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, "veco2:heartbeat", time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            stale = []
            for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
                last = max(float(trial.system_attrs.get("veco2:heartbeat", 0.0)), started)
                if now - last > self._grace_period:
                    stale.append(trial._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self._heartbeat_interval

        def get_heartbeat_stale_trial_callback(self):
            return self._stale_trial_callback

    return HeartbeatJournalStorage


def open_storage(url: str | None, out_dir: str | Path, heartbeat_interval: int = 10, grace_period: int = 60,
                 max_retry: int = 2):
    """The study storage.

    - ``None`` (default): Optuna's journal file ``OUT/optuna-journal.log`` -- safe for several
      processes on one machine (file lock).
    - a path without ``://``: a journal file there.
    - a URL (``postgresql+psycopg2://user:pw@host/db``, ``sqlite:///file.db``, ``mysql+pymysql://...``):
      ``optuna.storages.RDBStorage`` through SQLAlchemy -- PostgreSQL for runs over several nodes.

    Both kinds record heartbeats every ``heartbeat_interval`` s; a RUNNING trial silent for
    ``grace_period`` s is marked FAIL by the next worker and re-enqueued with the same parameters
    (``RetryHeartbeatStaleTrialCallback``, at most ``max_retry`` times; retries carry the system
    attribute ``failed_trial`` = the original number).
    """
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    import warnings

    with warnings.catch_warnings():  # "experimental" since Optuna 2.8; the interface we use is stable
        warnings.simplefilter("ignore")
        retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    if url and "://" in url:
        # Workers starting together on a fresh database race to create Optuna's tables (a unique
        # violation in PostgreSQL's catalogue): retry a few times; the loser finds them created.
        for attempt in range(5):
            try:
                return RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                  heartbeat_stale_trial_callback=retry,
                                  engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None)
            except Exception as err:  # bad URL, server down, missing driver, table-creation race
                if attempt < 4 and ("duplicate key" in str(err) or "already exists" in str(err)):
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise Veco2Error(f"--storage {_redact(url)}: cannot open the database: "
                                 f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    path = Path(url) if url else Path(out_dir) / "optuna-journal.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    storage_class = _heartbeat_journal_storage_class()
    return storage_class(JournalFileBackend(str(path)), heartbeat_interval, grace_period, retry)


def _redact(url: str) -> str:
    """A URL with its password hidden (for messages and reports)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def make_sampler(sweep: Sweep):
    """TPE seeded with ``sampler.seed``: the same study config gives the same trials (one worker)."""
    import optuna

    s = sweep["sampler"]
    return optuna.samplers.TPESampler(seed=s["seed"], n_startup_trials=s["n_startup_trials"],
                                      multivariate=s["multivariate"])


def make_pruner(sweep: Sweep):
    """``median`` (MedianPruner), ``hyperband`` (HyperbandPruner over training steps) or ``none``."""
    import optuna

    p, steps = sweep["pruner"], sweep["trial"]["steps"]
    if p["type"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p["n_startup_trials"], n_warmup_steps=p["n_warmup_steps"])
    if p["type"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p["min_resource"], max_resource=steps,
                                              reduction_factor=p["reduction_factor"])
    return optuna.pruners.NopPruner()


def open_study(sweep: Sweep, study_name: str, storage):
    """Create the study, or load it; refuse a study created from a different sweep definition."""
    import optuna

    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                sampler=make_sampler(sweep), pruner=make_pruner(sweep), load_if_exists=True)
    identity = sweep.identity()
    recorded = study.user_attrs.get("sweep_identity")
    if recorded is None:
        study.set_user_attr("sweep_identity", identity)
        study.set_user_attr("sweep_settings", sweep.settings)
        study.set_user_attr("pretrain_overrides", list(sweep.pretrain_overrides))
    elif recorded != identity:
        raise Veco2Error(f"study {study_name!r} was created from another sweep definition (identity {recorded}, "
                         f"this one {identity}); use a new --study name or the same config")
    return study


# ----------------------------------------------------------------------------------------------
# The shared starting point


@dataclass
class Start:
    """What every trial shares: tokenizer directory, shard directory and initial weights (or None:
    the seeded random initialisation, which is the same for every trial)."""

    tokenizer: str
    shard_dir: str
    init_from: str | None


def ensure_start(sweep: Sweep, out_dir: str | Path) -> Start:
    """Build (or reuse, or resume) ``OUT/start`` once per study; concurrent workers wait on a lock."""
    from .trainer import prepare_data, pretrain

    start_dir = Path(out_dir) / "start"
    s = sweep["start"]
    extra = dict(s["overrides"])
    if s["init_from"]:
        extra.update({"model.init_from": s["init_from"], "data.tokenizer": s["init_from"]})
    extra["training.max_steps"] = max(s["steps"], 1)
    cfg = sweep.base_config(extra)
    shard_dir = cfg.data.shard_dir or str(start_dir / "shards")
    with file_lock(Path(out_dir) / "start.lock"):
        if s["steps"] > 0:
            pretrain(cfg, start_dir)
            model_dir = str(start_dir / "model")
            return Start(tokenizer=model_dir, shard_dir=shard_dir, init_from=model_dir)
        prepare_data(cfg, start_dir)
    tokenizer = str(start_dir / "tokenizer") if cfg.data.tokenizer == "train" else cfg.data.tokenizer
    return Start(tokenizer=tokenizer, shard_dir=shard_dir, init_from=s["init_from"])


def trial_config(sweep: Sweep, start: Start, params: dict[str, Any], name: str) -> Config:
    """The pre-training config of one trial: base + trial overrides + shared start + sampled params.

    Metrics are logged (and the intermediate proxy reported) every ``report_every`` steps.
    """
    t = sweep["trial"]
    extra = dict(t["overrides"])
    extra.update({"data.tokenizer": start.tokenizer, "data.shard_dir": start.shard_dir,
                  "training.max_steps": t["steps"], "training.checkpoint_every": t["report_every"],
                  "training.log_every": t["report_every"],
                  "training.keep_checkpoints": 1, "training.checkpoint_dir": None,
                  "evaluation.heldout_pairs": sweep["proxy"]["pairs"], "name": name})
    if start.init_from:
        extra["model.init_from"] = start.init_from
    extra.update(params)
    return sweep.base_config(extra)


# ----------------------------------------------------------------------------------------------
# Proxy terms


class _CachedCorpus:
    """Dev pairs and dictionary miners read once per worker (every trial evaluates the same ones)."""

    def __init__(self, root: str):
        from .data.corpus import Corpus

        self.corpus = Corpus(root)
        self._pairs: dict[str, list] = {}

    def parallel(self, lang: str, split: str = "dev") -> list[tuple[str, str]]:
        if (lang, split) not in self._pairs:
            self._pairs[(lang, split)] = self.corpus.parallel(lang, split)
        return self._pairs[(lang, split)]

    def dictionary_path(self, lang: str):
        return self.corpus.dictionary_path(lang)


@dataclass
class WordItem:
    """One dictionary word pair in one dev sentence pair: token ids of each side (no special tokens)
    and the subword spans of the two words (end exclusive)."""

    src_ids: list[int]
    tgt_ids: list[int]
    src_span: tuple[int, int]
    tgt_span: tuple[int, int]

    @property
    def src_word(self) -> tuple[int, ...]:
        return tuple(self.src_ids[self.src_span[0]:self.src_span[1]])

    @property
    def tgt_word(self) -> tuple[int, ...]:
        return tuple(self.tgt_ids[self.tgt_span[0]:self.tgt_span[1]])


def word_items(corpus, lang: str, tokenizer, pairs: int, max_length: int, max_words: int = 200) -> list[WordItem]:
    """Dictionary word pairs found in the first ``pairs`` dev pairs of en-``lang``.

    Matching is :class:`veco2.data.synonyms.SynonymMiner` (the token loss's own dictionary matcher).
    One item per distinct (source word, target word) surface pair -- its first occurrence -- up to
    ``max_words``; a language without a dictionary gives none.
    """
    from .data.synonyms import SynonymMiner, mine_corpus

    path = corpus.dictionary_path(lang)
    if path is None:
        return []
    miner = SynonymMiner.from_file(path, "en", lang)
    items, seen = [], set()
    for mined in mine_corpus(corpus.parallel(lang, "dev")[:pairs], miner, tokenizer, max_length=max_length):
        for s0, s1, t0, t1 in mined.spans:
            item = WordItem(mined.src_ids, mined.tgt_ids, (s0, s1), (t0, t1))
            key = (item.src_word, item.tgt_word)
            if key not in seen:
                seen.add(key)
                items.append(item)
            if len(items) >= max_words:
                return items
    return items


def _word_vectors(encoder, ids_and_spans: list[tuple[list[int], tuple[int, int]]], layer: int, bos: int, eos: int,
                  pad: int, batch_size: int = 64):
    """Mean of a word's subword vectors at ``layer`` with its sentence as context (``<s> ids </s>``)."""
    import torch

    vectors = []
    for start in range(0, len(ids_and_spans), batch_size):
        chunk = ids_and_spans[start:start + batch_size]
        length = max(len(ids) for ids, _ in chunk) + 2
        input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for i, (ids, _) in enumerate(chunk):
            row = [bos, *ids, eos]
            input_ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        hidden = encoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
        for i, (_, (s0, s1)) in enumerate(chunk):
            vectors.append(hidden[i, 1 + s0:1 + s1].float().mean(0))  # +1: the <s> in front
    return torch.nn.functional.normalize(torch.stack(vectors), dim=-1)


def word_translation_accuracy(encoder, items: list[WordItem], layer: int, special) -> float | None:
    """Word-translation accuracy (percent) from contextual embeddings, both directions averaged.

    Each item's source word and target word are embedded in their own sentences (mean of the word's
    subword vectors at ``layer``); each source vector retrieves its nearest target vector by cosine
    over all items of the language (ties: the lowest index), and it is correct when that target is
    the *same target word* (same subword sequence) as the item's own, so repeated target words are
    not counted wrong.  The reverse direction is the same with the roles swapped.  None when fewer
    than 2 items.
    """
    import torch

    if len(items) < 2:
        return None
    with torch.no_grad():
        was_training = encoder.training
        encoder.eval()
        src = _word_vectors(encoder, [(it.src_ids, it.src_span) for it in items], layer, special.bos, special.eos,
                            special.pad)
        tgt = _word_vectors(encoder, [(it.tgt_ids, it.tgt_span) for it in items], layer, special.bos, special.eos,
                            special.pad)
        encoder.train(was_training)
    sim = src @ tgt.T
    forward = sim.argmax(dim=1).tolist()
    backward = sim.argmax(dim=0).tolist()
    tgt_words = [it.tgt_word for it in items]
    src_words = [it.src_word for it in items]
    correct_f = sum(tgt_words[j] == tgt_words[i] for i, j in enumerate(forward))
    correct_b = sum(src_words[j] == src_words[i] for i, j in enumerate(backward))
    return 100.0 * (correct_f + correct_b) / (2 * len(items))


def combine(terms: dict[str, float | None], weights: dict[str, float]) -> float:
    """The proxy ``Σ w_k s_k / Σ w_k`` over terms with ``w_k > 0`` and a value (percent)."""
    used = [(weights.get(k, 0.0), v) for k, v in terms.items() if weights.get(k, 0.0) > 0 and v is not None]
    if not used:
        raise Veco2Error(f"no proxy term could be computed (terms {terms}, weights {weights})")
    return sum(w * v for w, v in used) / sum(w for w, _ in used)


class Evaluator:
    """Computes the proxy terms of a trial's encoder; data read once per worker."""

    def __init__(self, sweep: Sweep, cfg: Config, tokenizer, languages: list[str]):
        from .data.batching import SpecialTokens

        self.sweep, self.tokenizer, self.languages = sweep, tokenizer, languages
        self.pairs = sweep["proxy"]["pairs"]
        self.weights = sweep["proxy"]["weights"]
        self.corpus = _CachedCorpus(cfg.data.corpus)
        self.special = SpecialTokens.of(tokenizer)
        self.pooling = cfg.evaluation.retrieval_pooling
        self.items = {}
        if self.weights.get("word_translation", 0) > 0:
            self.items = {lang: word_items(self.corpus, lang, tokenizer, self.pairs, cfg.data.max_length)
                          for lang in languages}
            counts = {lang: len(v) for lang, v in self.items.items()}
            log.info("word-translation items per language: %s", counts)
            if all(n < 2 for n in counts.values()):
                raise Veco2Error(f"proxy word_translation: fewer than 2 dictionary words found in the first "
                                 f"{self.pairs} dev pairs of every language ({counts}); raise proxy.pairs or set "
                                 "proxy.weights.word_translation to 0")

    def layer(self, cfg: Config, num_layers: int) -> int:
        from .xtreme.evaluate import default_layer

        layer = cfg.evaluation.retrieval_layer
        return layer if layer is not None else default_layer(num_layers)

    def cheap_terms(self, mlm_encoder, cfg: Config, weights: dict[str, float],
                    retrieval: float | None = None) -> dict[str, float | None]:
        """The cheap terms with a weight > 0 in ``weights``, of an ``XLMRobertaForMaskedLM``
        (``retrieval`` may be given: the trainer's summary already holds it)."""
        from .trainer import heldout_retrieval

        layer = self.layer(cfg, mlm_encoder.config.num_hidden_layers)
        terms: dict[str, float | None] = {}
        if weights.get("retrieval", 0) > 0:
            if retrieval is None:
                retrieval = heldout_retrieval(mlm_encoder.roberta, self.tokenizer, self.corpus, self.languages, layer,
                                              self.pooling, self.pairs).get("mean")
            terms["retrieval"] = retrieval
        if weights.get("word_translation", 0) > 0:
            scores = [word_translation_accuracy(mlm_encoder.roberta, items, layer, self.special)
                      for items in self.items.values()]
            scores = [s for s in scores if s is not None]
            terms["word_translation"] = sum(scores) / len(scores) if scores else None
        return terms

    def xnli(self, model_dir: Path, out_dir: Path, seed: int) -> float:
        """English dev accuracy of a quick XNLI fine-tune of ``model_dir`` (veco2.xtreme.finetune)."""
        from .xtreme.finetune import run_finetune

        x = self.sweep["proxy"]["xnli"]
        results = run_finetune("xnli", model_dir, out_dir, seeds=(seed,), data_root=x["data_root"],
                               languages=["en"],
                               overrides={"max_steps": x["max_steps"], "max_train_examples": x["max_train_examples"],
                                          "batch_size": x["batch_size"], "learning_rate": x["learning_rate"],
                                          "eval_steps": x["max_steps"]})
        return float(results[0]["selection"]["best_dev_score"])


# ----------------------------------------------------------------------------------------------
# One trial


class TrialRunner:
    """The objective: pre-train, report the intermediate proxy every ``report_every`` steps, prune, score."""

    def __init__(self, sweep: Sweep, out_dir: Path, start: Start, worker: str):
        from .data.batching import SpecialTokens
        from .data.shards import PretrainingShards
        from .data.tokenizer import load_tokenizer

        self.sweep, self.out_dir, self.start, self.worker = sweep, out_dir, start, worker
        self.tokenizer = load_tokenizer(start.tokenizer)
        self.special = SpecialTokens.of(self.tokenizer)
        shards = PretrainingShards.open(Path(start.shard_dir))
        self.languages = [lang for lang in shards.manifest["languages"] if lang != "en"]
        self.evaluator = Evaluator(sweep, trial_config(sweep, start, {}, "probe"), self.tokenizer, self.languages)

    def __call__(self, trial) -> float:
        import optuna

        from .trainer import pretrain

        sweep = self.sweep
        trial.set_user_attr("worker", self.worker)
        params = {key: suggest(trial, key, spec) for key, spec in sweep["space"].items()}
        trial_dir = self.out_dir / "trials" / f"trial-{trial.number:04d}"
        shutil.rmtree(trial_dir, ignore_errors=True)  # leftovers of a deleted study with the same --out
        cfg = trial_config(sweep, self.start, params, f"{trial.study.study_name}-trial-{trial.number}")
        trial.set_user_attr("trial_dir", str(trial_dir))
        trial.set_user_attr("pretrain_seed", cfg.training.seed)
        weights, every, steps = sweep["proxy"]["weights"], sweep["trial"]["report_every"], sweep["trial"]["steps"]
        cheap_weights = {k: weights.get(k, 0.0) for k in CHEAP_TERMS}
        if not any(cheap_weights.values()):
            cheap_weights = {"retrieval": 1.0}  # only the fine-tune term is weighted: report retrieval
        started = time.time()

        def report(record: dict, model) -> None:
            step = record["step"]
            if step % every or step >= steps:
                return
            terms = self.evaluator.cheap_terms(model.encoder, cfg, cheap_weights)
            value = combine(terms, cheap_weights)
            append_jsonl(trial_dir / "intermediate.jsonl", {"step": step, "value": value, **terms})
            trial.report(value, step)
            if trial.should_prune():
                log.info("trial %d pruned at step %d (intermediate proxy %.2f)", trial.number, step, value)
                raise optuna.TrialPruned(f"pruned at step {step}: intermediate proxy {value:.3f}")

        try:
            summary = pretrain(cfg, trial_dir, on_log=report)
        except optuna.TrialPruned:
            self._clean(trial_dir, keep_model=False)
            raise

        model_dir = trial_dir / "model"
        from transformers import AutoModelForMaskedLM

        encoder = AutoModelForMaskedLM.from_pretrained(model_dir)
        terms = self.evaluator.cheap_terms(encoder, cfg, cheap_weights,
                                           retrieval=summary["retrieval"]["accuracy"].get("mean"))
        trial.report(combine(terms, cheap_weights), steps)
        if weights.get("xnli", 0) > 0:
            terms["xnli"] = self.evaluator.xnli(model_dir, trial_dir / "xnli", sweep["sampler"]["seed"])
        proxy = combine(terms, weights)
        for key, value in terms.items():
            trial.set_user_attr(f"proxy_{key}", value)
        trial.set_user_attr("seconds", round(time.time() - started, 2))
        write_json(trial_dir / "proxy.json", {"trial": trial.number, "params": params, "terms": terms,
                                              "weights": weights, "proxy": proxy, "final_losses": summary.get("final_losses")})
        self._clean(trial_dir, keep_model=sweep["trial"]["keep_models"])
        return proxy

    @staticmethod
    def _clean(trial_dir: Path, keep_model: bool) -> None:
        shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)
        if not keep_model:
            shutil.rmtree(trial_dir / "model", ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Workers


FINISHED_STATES = ("COMPLETE", "PRUNED")


def finished_by(study, worker: str) -> int:
    """Trials recorded under ``worker`` that finished (COMPLETE or PRUNED)."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state.name in FINISHED_STATES and t.user_attrs.get("worker") == worker)


def run_worker(sweep: Sweep, study_name: str, trials: int, out_dir: str | Path, storage_url: str | None = None,
               worker: str = "default") -> dict:
    """Run trials until ``trials`` trials recorded under ``worker`` have finished.

    Workers with distinct names add their quotas; a worker started again under the same name after
    a crash completes its quota.  Stale trials of dead workers are failed and re-enqueued by Optuna's
    heartbeat check at the start of each trial (see :func:`open_storage`).  A trial that raises a
    :class:`Veco2Error` (e.g. diverging losses) is marked FAIL and another is run; after
    ``storage.max_failures`` failures in a row the worker stops with an error.

    Returns ``{"study", "worker", "ran", "finished_by_worker", "failed"}``.
    """
    import optuna

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    st = sweep["storage"]
    storage = open_storage(storage_url, out_dir, st["heartbeat_interval"], st["grace_period"], st["max_retry"])
    study = open_study(sweep, study_name, storage)
    study.set_user_attr(f"worker:{worker}:requested", trials)
    start = ensure_start(sweep, out_dir)
    runner = TrialRunner(sweep, out_dir, start, worker)
    ran, failed_in_a_row, failed = [], 0, 0
    while finished_by(study, worker) < trials:
        before = {t.number for t in study.get_trials(deepcopy=False)}
        study.optimize(runner, n_trials=1, catch=(Veco2Error,), gc_after_trial=True)
        mine = [t for t in study.get_trials(deepcopy=False)
                if t.number not in before or t.user_attrs.get("worker") == worker]
        latest = max((t for t in mine if t.user_attrs.get("worker") == worker), key=lambda t: t.number, default=None)
        if latest is not None:
            ran.append(latest.number)
            if latest.state == optuna.trial.TrialState.FAIL:
                failed += 1
                failed_in_a_row += 1
                if failed_in_a_row >= st["max_failures"]:
                    raise Veco2Error(f"study {study_name!r}: {failed_in_a_row} trials of worker {worker!r} failed in a "
                                     f"row (last: trial {latest.number}: {latest.system_attrs.get('fail_reason', '?')})")
            else:
                failed_in_a_row = 0
    return {"study": study_name, "worker": worker, "ran": ran, "finished_by_worker": finished_by(study, worker),
            "failed": failed}


# ----------------------------------------------------------------------------------------------
# Report: best.yaml, trials.csv, plots


def best_ablation(sweep: Sweep, study, name: str = "tuned") -> tuple[dict, str]:
    """The best trial's parameters as an ablation file (the schema of ``ablations/*.yaml``): the
    sweep's ablation file with the tuned keys set.  Returns (mapping, YAML text with a header)."""
    best = study.best_trial
    data: dict = read_yaml(sweep["pretrain"]["ablation"]) if sweep["pretrain"]["ablation"] else {}
    data = copy.deepcopy(data)
    data["name"] = name
    data["description"] = (f"Tuned by Optuna study {study.study_name!r}: trial {best.number}, proxy "
                           f"{best.value:.3f}")
    for key, value in best.params.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    terms = {k.removeprefix("proxy_"): v for k, v in best.user_attrs.items() if k.startswith("proxy_")}
    header = (f"# Found by `veco2 sweep` (study {study.study_name!r}, sweep config {sweep.source}).\n"
              f"# Best trial {best.number}: proxy {best.value:.4f} = weighted mean of {terms}\n"
              f"# with weights {sweep['proxy']['weights']}, after {sweep['trial']['steps']} steps from a shared "
              f"start ({sweep['start']['steps']} warm-start steps).\n"
              "# Demo-scale proxies: re-check with the full XTREME evaluation before relying on these values.\n")
    # the same file must load as an ablation variant
    text = header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return data, text


def trials_table(study):
    """All trials as a pandas DataFrame (Optuna's ``trials_dataframe`` plus retry provenance)."""
    frame = study.trials_dataframe(attrs=("number", "value", "datetime_start", "datetime_complete", "duration",
                                          "params", "user_attrs", "state", "intermediate_values"))
    frame["retry_of"] = [t.system_attrs.get("failed_trial") for t in study.trials]
    return frame


PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "slice": "plot_slice",
    "contour": "plot_contour",
    "intermediate_values": "plot_intermediate_values",
}


def write_plots(study, plot_dir: Path) -> dict[str, str]:
    """Matplotlib plots (PNG + SVG) from ``optuna.visualization.matplotlib``; a plot that cannot be
    drawn yet (too few trials, one parameter for a contour, ...) is skipped with its reason."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plot_dir.mkdir(parents=True, exist_ok=True)
    status = {}
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = getattr(ovm, function)(study)
            figure = result.figure if hasattr(result, "figure") else result.flat[0].figure
            figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure.tight_layout()
            for suffix in ("png", "svg"):
                tmp = plot_dir / f".{name}.tmp.{suffix}"
                figure.savefig(tmp, format=suffix, dpi=110)
                tmp.replace(plot_dir / f"{name}.{suffix}")
            plt.close(figure)
            status[name] = "written"
        except Exception as err:  # noqa: BLE001 -- a plot is optional; the reason goes in the report
            status[name] = f"skipped: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.info("plot %s skipped: %s", name, status[name])
        finally:
            plt.close("all")
    return status


def write_report(sweep: Sweep, study, out_dir: str | Path, storage_url: str | None = None,
                 install_ablation: str | Path | None = None, name: str = "tuned") -> dict:
    """Write ``best.yaml``, ``trials.csv``, ``plots/`` and ``report.md`` into ``out_dir`` (atomic
    writes; several workers may write it, the last one sees the most trials).  ``install_ablation``
    copies best.yaml there too (e.g. ``ablations/tuned.yaml``)."""
    from optuna.trial import TrialState

    out_dir = Path(out_dir)
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    frame = trials_table(study)
    from .fileio import atomic_write

    with atomic_write(out_dir / "trials.csv", "w") as handle:
        frame.to_csv(handle, index=False)
    plots = write_plots(study, out_dir / "plots")
    summary: dict = {"study": study.study_name, "counts": counts, "plots": plots,
                     "storage": _redact(storage_url) if storage_url else str(out_dir / "optuna-journal.log")}
    if counts["COMPLETE"]:
        data, text = best_ablation(sweep, study, name)
        write_text(out_dir / "best.yaml", text)
        load_config(out_dir / "best.yaml")  # proves the file is a valid ablation
        if install_ablation:
            write_text(install_ablation, text)
        best = study.best_trial
        summary.update({"best_trial": best.number, "best_value": best.value, "best_params": best.params,
                        "best_terms": {k.removeprefix("proxy_"): v for k, v in best.user_attrs.items()
                                       if k.startswith("proxy_")}})
    lines = [f"# Sweep `{study.study_name}`", "",
             f"Sweep config `{sweep.source}`; storage `{summary['storage']}`.", "",
             "Trials: " + ", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v) + ".", "",
             f"Proxy = Σ w·s / Σ w over {sweep['proxy']['weights']} (each term in percent).", ""]
    if "best_trial" in summary:
        lines += [f"Best trial {summary['best_trial']}: proxy {summary['best_value']:.3f}, terms "
                  f"{summary['best_terms']}", "", "| parameter | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.6g} |" if isinstance(v, float) else f"| `{k}` | {v} |"
                  for k, v in summary["best_params"].items()]
        lines += ["", "Ablation file: `best.yaml`.", ""]
    lines += ["## Plots", ""]
    lines += [f"![{k}](plots/{k}.png)" if v == "written" else f"- {k}: {v}" for k, v in plots.items()]
    lines += ["", "## Trials", "", frame.drop(columns=[c for c in frame.columns if c.startswith("datetime")])
              .to_markdown(index=False), ""]
    write_text(out_dir / "report.md", "\n".join(lines))
    write_json(out_dir / "summary.json", summary)
    return summary

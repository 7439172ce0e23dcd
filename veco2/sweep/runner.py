"""Running trials: the shared starting point, one trial's config and objective, the worker loop.

:func:`ensure_start` builds ``OUT/start`` once per study (tokenizer, shards, a warm start);
:func:`trial_config` is one trial's pre-training config; :class:`TrialRunner` is the objective
(pre-train, report the intermediate proxy, prune, score); :func:`run_worker` runs trials until the
worker's quota of finished trials is reached.  Details: docs/sweeps.md.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import Veco2Error
from ..fileio import append_jsonl, file_lock, write_json
from .proxy import CHEAP_TERMS, Evaluator, combine
from .spec import Sweep, suggest
from .storage import open_storage, open_study

log = logging.getLogger(__name__)


@dataclass
class Start:
    """What every trial shares: tokenizer directory, shard directory and initial weights (or None:
    the seeded random initialisation, which is the same for every trial)."""

    tokenizer: str
    shard_dir: str
    init_from: str | None


def ensure_start(sweep: Sweep, out_dir: str | Path) -> Start:
    """Build (or reuse, or resume) ``OUT/start`` once per study; concurrent workers wait on a lock."""
    from ..trainer import prepare_data, pretrain

    start_dir = Path(out_dir) / "start"
    s = sweep.settings.start
    extra = dict(s.overrides)
    if s.init_from:
        extra.update({"model.init_from": s.init_from, "data.tokenizer": s.init_from})
    extra["training.max_steps"] = max(s.steps, 1)
    cfg = sweep.base_config(extra)
    shard_dir = cfg.data.shard_dir or str(start_dir / "shards")
    with file_lock(Path(out_dir) / "start.lock"):
        if s.steps > 0:
            pretrain(cfg, start_dir)
            model_dir = str(start_dir / "model")
            return Start(tokenizer=model_dir, shard_dir=shard_dir, init_from=model_dir)
        prepare_data(cfg, start_dir)
    tokenizer = str(start_dir / "tokenizer") if cfg.data.tokenizer == "train" else cfg.data.tokenizer
    return Start(tokenizer=tokenizer, shard_dir=shard_dir, init_from=s.init_from)


def trial_config(sweep: Sweep, start: Start, params: dict[str, Any], name: str) -> Config:
    """The pre-training config of one trial: base + trial overrides + shared start + sampled params.

    Metrics are logged (and the intermediate proxy reported) every ``report_every`` steps.
    """
    t = sweep.settings.trial
    extra = dict(t.overrides)
    extra.update({"data.tokenizer": start.tokenizer, "data.shard_dir": start.shard_dir,
                  "training.max_steps": t.steps, "training.checkpoint_every": t.report_every,
                  "training.log_every": t.report_every,
                  "training.keep_checkpoints": 1, "training.checkpoint_dir": None,
                  "evaluation.heldout_pairs": sweep.settings.proxy.pairs, "name": name})
    if start.init_from:
        extra["model.init_from"] = start.init_from
    extra.update(params)
    return sweep.base_config(extra)


# ----------------------------------------------------------------------------------------------
# One trial


class TrialRunner:
    """The objective: pre-train, report the intermediate proxy every ``report_every`` steps, prune, score."""

    def __init__(self, sweep: Sweep, out_dir: Path, start: Start, worker: str):
        from ..data.batching import SpecialTokens
        from ..data.shards import PretrainingShards
        from ..data.tokenizer import load_tokenizer

        self.sweep, self.out_dir, self.start, self.worker = sweep, out_dir, start, worker
        self.tokenizer = load_tokenizer(start.tokenizer)
        self.special = SpecialTokens.of(self.tokenizer)
        shards = PretrainingShards.open(Path(start.shard_dir))
        self.languages = [lang for lang in shards.manifest["languages"] if lang != "en"]
        self.evaluator = Evaluator(sweep, trial_config(sweep, start, {}, "probe"), self.tokenizer, self.languages)

    def __call__(self, trial) -> float:
        import optuna

        from ..trainer import pretrain

        settings = self.sweep.settings
        trial.set_user_attr("worker", self.worker)
        params = {key: suggest(trial, key, param) for key, param in settings.space.items()}
        trial_dir = self.out_dir / "trials" / f"trial-{trial.number:04d}"
        shutil.rmtree(trial_dir, ignore_errors=True)  # leftovers of a deleted study with the same --out
        cfg = trial_config(self.sweep, self.start, params, f"{trial.study.study_name}-trial-{trial.number}")
        trial.set_user_attr("trial_dir", str(trial_dir))
        trial.set_user_attr("pretrain_seed", cfg.training.seed)
        weights, every, steps = settings.proxy.weights.as_dict(), settings.trial.report_every, settings.trial.steps
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
            terms["xnli"] = self.evaluator.xnli(model_dir, trial_dir / "xnli", settings.sampler.seed)
        proxy = combine(terms, weights)
        for key, value in terms.items():
            trial.set_user_attr(f"proxy_{key}", value)
        trial.set_user_attr("seconds", round(time.time() - started, 2))
        write_json(trial_dir / "proxy.json", {"trial": trial.number, "params": params, "terms": terms,
                                              "weights": weights, "proxy": proxy, "final_losses": summary.get("final_losses")})
        self._clean(trial_dir, keep_model=settings.trial.keep_models)
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
    st = sweep.settings.storage
    storage = open_storage(storage_url, out_dir, st.heartbeat_interval, st.grace_period, st.max_retry)
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
                if failed_in_a_row >= st.max_failures:
                    raise Veco2Error(f"study {study_name!r}: {failed_in_a_row} trials of worker {worker!r} failed in a "
                                     f"row (last: trial {latest.number}: {latest.system_attrs.get('fail_reason', '?')})")
            else:
                failed_in_a_row = 0
    return {"study": study_name, "worker": worker, "ran": ran, "finished_by_worker": finished_by(study, worker),
            "failed": failed}

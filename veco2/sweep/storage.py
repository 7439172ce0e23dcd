"""The study storage and the study: a journal file or a database, with heartbeats on both.

:func:`open_storage` opens Optuna's journal file (several processes on one machine) or an RDB
storage (several nodes); a trial whose worker died is failed by the heartbeat check and re-enqueued.
:func:`open_study` creates or loads the study with the sweep's seeded sampler and its pruner and
refuses a study created from another sweep definition.  Details: docs/sweeps.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import Veco2Error
from .spec import Sweep


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

    s = sweep.settings.sampler
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials, multivariate=s.multivariate)


def make_pruner(sweep: Sweep):
    """``median`` (MedianPruner), ``hyperband`` (HyperbandPruner over training steps) or ``none``."""
    import optuna

    p, steps = sweep.settings.pruner, sweep.settings.trial.steps
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=steps,
                                              reduction_factor=p.reduction_factor)
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
        study.set_user_attr("sweep_settings", sweep.settings.to_dict())
        study.set_user_attr("pretrain_overrides", list(sweep.pretrain_overrides))
    elif recorded != identity:
        raise Veco2Error(f"study {study_name!r} was created from another sweep definition (identity {recorded}, "
                         f"this one {identity}); use a new --study name or the same config")
    return study

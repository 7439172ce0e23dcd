"""Optuna sweeps over the unpublished VECO 2.0 settings (τ_seq, τ_tok, λ_seq, λ_tok, layers, ...).

A trial pre-trains for a few steps from a shared starting point with sampled settings and is scored
by a cheap proxy evaluation; the study maximises the proxy.  Modules: :mod:`.spec` (the sweep file),
:mod:`.storage` (study storage, heartbeats, sampler, pruner), :mod:`.proxy` (the proxy terms),
:mod:`.runner` (the shared start, trials, workers), :mod:`.report` (best.yaml, trials.csv, plots),
:mod:`.cli` (``veco2 sweep``).  How it works and every setting: docs/sweeps.md.
"""

from .proxy import CHEAP_TERMS, PROXY_TERMS, Evaluator, WordItem, combine, word_items, word_translation_accuracy
from .report import PLOTS, best_ablation, trials_table, write_plots, write_report
from .runner import Start, TrialRunner, ensure_start, finished_by, run_worker, trial_config
from .spec import Sweep, SweepSettings, load_sweep, suggest
from .storage import make_pruner, make_sampler, open_storage, open_study

__all__ = ["CHEAP_TERMS", "PLOTS", "PROXY_TERMS", "Evaluator", "Start", "Sweep", "SweepSettings", "TrialRunner",
           "WordItem", "best_ablation", "combine", "ensure_start", "finished_by", "load_sweep", "make_pruner",
           "make_sampler", "open_storage", "open_study", "run_worker", "suggest", "trial_config", "trials_table",
           "word_items", "word_translation_accuracy", "write_plots", "write_report"]

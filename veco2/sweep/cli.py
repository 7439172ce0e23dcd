"""``veco2 sweep``: one Optuna worker of a study (see :mod:`veco2.sweep`).

Each invocation is one worker; start several (Snakemake jobs, a cluster profile, or plain shell
``&``) on the same ``--storage`` to run them in parallel::

    veco2 sweep --study demo --trials 6 --config config/sweep/demo.yaml --out results/demo/sweeps/demo
    veco2 sweep --study big --trials 10 --worker 3 --storage postgresql+psycopg2://veco2@db/veco2 \\
        --config config/sweep/small.yaml --out results/small/sweeps/big
    veco2 sweep --study demo --report-only --config config/sweep/demo.yaml --out results/demo/sweeps/demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_text import plain_text


def cmd_sweep(args) -> None:
    from . import load_sweep, open_storage, open_study, run_worker, write_report

    sweep = load_sweep(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("results/sweeps") / args.study
    if not args.report_only:
        result = run_worker(sweep, args.study, args.trials, out, storage_url=args.storage, worker=args.worker)
        print(f"{out}: worker {result['worker']!r} ran trials {result['ran']} "
              f"({result['finished_by_worker']} finished under its name, {result['failed']} failed)")
    st = sweep.settings.storage
    storage = open_storage(args.storage, out, st.heartbeat_interval, st.grace_period, st.max_retry)
    study = open_study(sweep, args.study, storage)
    install = args.install_ablation
    summary = write_report(sweep, study, out, storage_url=args.storage, install_ablation=install, name=args.name)
    counts = ", ".join(f"{k.lower()} {v}" for k, v in summary["counts"].items() if v)
    best = (f"; best trial {summary['best_trial']} proxy {summary['best_value']:.3f} {summary['best_params']}"
            if "best_trial" in summary else "")
    print(f"{out}: study {args.study!r}: {counts}{best}")


def register(subparsers) -> None:
    """Add ``veco2 sweep`` to the ``veco2`` command's sub-parsers."""
    parser = subparsers.add_parser(
        "sweep", help="run one Optuna worker of a hyper-parameter study (τ, λ, ...) and write its report",
        description=plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, help="study name (shared by all workers of the study)")
    parser.add_argument("--trials", type=int, default=6,
                        help="finished trials (complete or pruned) this worker name must have in the study (default 6)")
    parser.add_argument("--config", required=True, metavar="YAML", help="sweep definition, e.g. config/sweep/demo.yaml")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="database URL (postgresql+psycopg2://..., sqlite:///...) or a journal file path "
                             "(default: OUT/optuna-journal.log)")
    parser.add_argument("--out", default=None, help="output directory (default results/sweeps/STUDY)")
    parser.add_argument("--worker", default="default",
                        help="worker name: the --trials quota is counted per name, so a restarted worker "
                             "completes its quota and distinct names add up (default 'default')")
    parser.add_argument("--report-only", action="store_true", help="only (re)write best.yaml, trials.csv, plots")
    parser.add_argument("--install-ablation", nargs="?", const="ablations/tuned.yaml", default=None, metavar="PATH",
                        help="also copy best.yaml to PATH (default ablations/tuned.yaml)")
    parser.add_argument("--name", default="tuned", help="the `name` written into best.yaml (default tuned)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="pre-training config overrides applied to the start run and to every trial")
    parser.set_defaults(func=cmd_sweep)

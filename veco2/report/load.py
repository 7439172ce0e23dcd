"""Read one scale's results directory (XTREME results, pre-training summaries and metrics,
Snakemake benchmarks, sweeps) into the :class:`ResultsTree` the report is built from; every gap
is listed in :attr:`ResultsTree.missing`, never filled with zeros.  The XTREME results are scored
by :mod:`veco2.xtreme.aggregate`.  Layout and gaps: ``docs/report.md#what-the-report-reads``.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from veco2.errors import InputError, Veco2Error
from veco2.fileio import iter_lines, read_json, read_jsonl
from veco2.xtreme import aggregate
from veco2.xtreme.aggregate import OFFICIAL_LANGUAGES, RETRIEVAL_TASKS, TASKS
from veco2.xtreme.aggregate import TRIVIAL
from veco2.xtreme.results import read_example_statistics

log = logging.getLogger(__name__)

# The ablation grid of the suite (ablations/*.yaml), which orders the table rows, and the variant
# every ablation delta is taken against (the MLM-only pre-training; the starting model, when the
# study has one in `baselines:`, is the second reference).
ABLATION_VARIANTS: tuple[str, ...] = ("mlm", "mlm_seq", "mlm_tok", "mlm_seq_tok")
REFERENCE_VARIANT = "mlm"

DEMO_BANNER = "Demo data, tiny models: not comparable with published XTREME numbers"

BENCHMARK_COLUMNS = ("s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out", "mean_load",
                     "cpu_time")  # fmt: skip


@dataclass
class ResultsTree:
    """Everything the report needs from one results directory.

    Attributes:
        root: the results directory.
        runs: one row per XTREME run that entered the means: ``variant, task, seed, score`` and,
            per metric of the task, its language mean (``accuracy``, ``f1``, ``exact_match`` ...).
        per_language: ``variant, task, seed, language, score`` with score = the headline metric,
            or (F1 + EM) / 2 for QA tasks (the per-language analogue of the task score).
        summary: :func:`aggregate.summarise` output (``variant, level, name, mean, std, n_seeds``).
        languages: the expected languages per task (union declared by its runs, official order).
        by_layer: ``variant, task, layer, score`` from retrieval runs written with ``--layer all``.
        pretrain: ``{variant: summary.json dict}``.
        metrics: ``{variant: DataFrame of metrics.jsonl}``.
        benchmarks: ``rule, wildcards, path`` + the benchmark columns (one row per repeat).
        sweeps: ``{study: {"trials": DataFrame | None, "images": [Path], "direction": str}}``.
        provenance: one row per run file (XTREME and pre-training) with commit, versions, hashes.
        missing: human-readable gap descriptions, in a stable order.
        variants: every model with results, in table order: the pre-trained variants, then the
            baselines.
        reference: the variant every ablation delta is taken against (the workflow's
            ``report.reference``, default :data:`REFERENCE_VARIANT`).
        demo: some XTREME result records ``data.demo = true`` (the packaged demo task data): every
            table, the HTML page and the notebook then carry :data:`DEMO_BANNER`.
        baselines: the models scored without a pre-training run of this study (the workflow's
            ``baselines:``, e.g. the hub model a continued pre-training starts from): XTREME
            results under ``xtreme/NAME`` and no ``pretrain/NAME`` directory.
    """

    root: Path
    variants: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    demo: bool = False
    reference: str = REFERENCE_VARIANT
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_language: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    languages: dict[str, list[str]] = field(default_factory=dict)
    by_layer: pd.DataFrame = field(default_factory=pd.DataFrame)
    pretrain: dict[str, dict] = field(default_factory=dict)
    metrics: dict[str, pd.DataFrame] = field(default_factory=dict)
    benchmarks: pd.DataFrame = field(default_factory=pd.DataFrame)
    sweeps: dict[str, dict] = field(default_factory=dict)
    provenance: pd.DataFrame = field(default_factory=pd.DataFrame)
    missing: list[str] = field(default_factory=list)
    examples: dict[tuple[str, str], dict[int, dict]] = field(default_factory=dict)
    """``{(variant, task): {seed: {language: ExampleStatistics}}}``: the per-example rows of the runs
    that entered the means (``example_statistics.json``), where every such run of the pair has
    them for every expected language; what the bootstrap intervals resample."""

    @property
    def pretrained(self) -> list[str]:
        """The variants pre-trained by this study (not the baselines, not the trivial row)."""
        return [v for v in self.variants if v not in self.baselines and v != TRIVIAL]


def order_variants(names) -> list[str]:
    """The ablation grid first (in its order), then any other variant alphabetically."""
    names = set(names)
    return [v for v in ABLATION_VARIANTS if v in names] + sorted(names - set(ABLATION_VARIANTS))


def load_results(root: str | Path, *, reference: str = REFERENCE_VARIANT) -> ResultsTree:
    """Load ``root`` (one scale's results directory) into a :class:`ResultsTree`.

    Raises :class:`InputError` when ``root`` is not a directory or holds none of the known parts;
    corrupt files raise :class:`InputError` naming the file (and line).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, None, "results directory not found")
    tree = ResultsTree(root=root, reference=reference)
    _load_pretrain(tree)
    _load_xtreme(tree)
    tree.benchmarks = _load_benchmarks(root / "benchmarks")
    tree.sweeps = _load_sweeps(root / "sweeps")
    tree.baselines = sorted(set(tree.variants) - set(tree.pretrain) - {TRIVIAL}) if tree.pretrain else []
    models = order_variants(set(tree.variants) | set(tree.pretrain))
    tree.variants = ([v for v in models if v not in tree.baselines and v != TRIVIAL] + tree.baselines
                     + ([TRIVIAL] if TRIVIAL in models else []))
    if not tree.variants and tree.benchmarks.empty and not tree.sweeps:
        raise InputError(root, None, "no xtreme/, pretrain/, benchmarks/ or sweeps/ results found")
    _list_pretrain_gaps(tree)
    for gap in tree.missing:
        log.warning("missing: %s", gap)
    return tree


# ---------------------------------------------------------------------------------------------
# XTREME
# ---------------------------------------------------------------------------------------------


def _load_xtreme(tree: ResultsTree) -> None:
    xtreme_dir = tree.root / "xtreme"
    if not xtreme_dir.is_dir():
        tree.missing.append(f"{xtreme_dir}: no XTREME results")
        return
    if not any(xtreme_dir.glob("*/*/*/results.json")):
        tree.missing.append(f"{xtreme_dir}: no results.json files")
        return
    long = aggregate.load_results_tree(xtreme_dir)
    variants = order_variants(long["variant"].unique())
    tree.variants = variants

    # Expected languages: union of what the runs of a task declare, in the official order.
    declared: dict[str, set[str]] = {}
    documents: dict[tuple[str, str, int], dict] = {}
    for (variant, task, seed), _ in long.groupby(["variant", "task", "seed"], sort=False):
        path = xtreme_dir / variant / task / f"seed{seed}" / "results.json"
        documents[(variant, task, seed)] = doc = read_json(path)
        declared.setdefault(task, set()).update(doc["languages"])
        tree.demo = tree.demo or bool((doc.get("data") or {}).get("demo"))
    tree.languages = {t: [lang for lang in OFFICIAL_LANGUAGES[t] if lang in declared[t]]
                      + sorted(declared[t] - set(OFFICIAL_LANGUAGES[t])) for t in TASKS if t in declared}

    run_rows, lang_rows, layer_rows, kept = [], [], [], []
    incomplete: set[tuple[str, str]] = set()  # a run without per-example rows: no intervals for the pair
    for (variant, task, seed), sdf in long.groupby(["variant", "task", "seed"], sort=False):
        per_language = {lang: dict(zip(ldf["metric"], ldf["value"])) for lang, ldf in sdf.groupby("language")}
        doc = documents[(variant, task, seed)]
        tree_provenance_row(tree, stage=f"xtreme/{task}", variant=variant, seed=seed, doc=doc,
                            path=xtreme_dir / variant / task / f"seed{seed}" / "results.json")
        expected = tree.languages[task]
        lacking = [lang for lang in expected if lang not in per_language]
        if lacking:
            tree.missing.append(f"xtreme/{variant}/{task}/seed{seed}: language(s) {' '.join(lacking)} missing; "
                                f"run left out of the means")
            continue
        try:
            means = aggregate.task_score(per_language, task, languages=expected)
        except Veco2Error as err:
            tree.missing.append(f"xtreme/{variant}/{task}/seed{seed}: {err}; run left out of the means")
            continue
        kept.append(sdf)
        statistics = read_example_statistics(xtreme_dir / variant / task / f"seed{seed}")
        if statistics is not None and all(lang in statistics for lang in expected):
            tree.examples.setdefault((variant, task), {})[seed] = {lang: statistics[lang] for lang in expected}
        else:
            incomplete.add((variant, task))
        run_rows.append({"variant": variant, "task": task, "seed": seed, **means})
        for lang in expected:
            lang_rows.append({"variant": variant, "task": task, "seed": seed, "language": lang,
                              "score": _language_score(task, per_language[lang])})
        for layer, score in (doc.get("task_score_by_layer") or {}).items():
            layer_rows.append({"variant": variant, "task": task, "layer": int(layer), "score": float(score)})

    for pair in incomplete:
        tree.examples.pop(pair, None)
    tree.runs = pd.DataFrame(run_rows)
    tree.per_language = pd.DataFrame(lang_rows, columns=["variant", "task", "seed", "language", "score"])
    tree.by_layer = pd.DataFrame(layer_rows, columns=["variant", "task", "layer", "score"])
    if kept:
        tree.summary = aggregate.summarise(pd.concat(kept), languages=tree.languages, allow_missing=True)
    else:
        tree.summary = pd.DataFrame(columns=["variant", "level", "name", "mean", "std", "n_seeds"])
    _list_xtreme_gaps(tree, long)


def _language_score(task: str, metrics: dict) -> float:
    """The per-language analogue of the task score: headline metric, (F1 + EM) / 2 for QA."""
    required = aggregate.TASK_METRICS[task]
    return sum(float(metrics[m]) for m in required) / len(required)


def _list_xtreme_gaps(tree: ResultsTree, long: pd.DataFrame) -> None:
    # the trivial row is one deterministic run (seed0) of every task: not a fine-tuning seed
    finetune_seeds = sorted({int(s) for v, t, s in zip(long["variant"], long["task"], long["seed"])
                             if t not in RETRIEVAL_TASKS and v != TRIVIAL})
    present = {(v, t): sorted(set(g["seed"])) for (v, t), g in long.groupby(["variant", "task"])}
    for variant in tree.variants:
        absent = [t for t in TASKS if (variant, t) not in present]
        if absent:
            tree.missing.append(f"xtreme/{variant}: task(s) {' '.join(absent)} missing")
        for task in TASKS:
            if (variant, task) not in present:
                continue
            deterministic = task in RETRIEVAL_TASKS or variant == TRIVIAL
            expected = [aggregate.RETRIEVAL_SEED] if deterministic else finetune_seeds
            lacking = [s for s in expected if s not in present[(variant, task)]]
            if lacking:
                tree.missing.append(f"xtreme/{variant}/{task}: seed(s) {' '.join(map(str, lacking))} missing")


def tree_provenance_row(tree: ResultsTree, *, stage: str, variant: str, seed, doc: dict, path: Path) -> None:
    """Append one run's provenance (commit, library versions, config / run hash) to the tree."""
    prov = doc.get("provenance") or {}
    versions = prov.get("versions") or {}
    row = {"stage": stage, "variant": variant, "seed": seed,
           "git_commit": prov.get("git_commit"), "config_hash": prov.get("config_hash"),
           "run_hash": doc.get("run_hash"),
           "versions": ", ".join(f"{k} {v}" for k, v in versions.items()) or None,
           "path": str(path.relative_to(tree.root))}
    tree.provenance = pd.concat([tree.provenance, pd.DataFrame([row])], ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Pre-training
# ---------------------------------------------------------------------------------------------


def _load_pretrain(tree: ResultsTree) -> None:
    pre_dir = tree.root / "pretrain"
    if not pre_dir.is_dir():
        tree.missing.append(f"{pre_dir}: no pre-training results")
        return
    for variant_dir in sorted(p for p in pre_dir.iterdir() if p.is_dir()):
        variant = variant_dir.name
        summary_path = variant_dir / "summary.json"
        if summary_path.exists():
            summary = read_json(summary_path)
            if not isinstance(summary, dict):
                raise InputError(summary_path, None, "summary.json must hold a JSON object")
            tree.pretrain[variant] = summary
            tree_provenance_row(tree, stage="pretrain", variant=variant, seed=None, doc=summary, path=summary_path)
        metrics_path = variant_dir / "metrics.jsonl"
        if metrics_path.exists():
            records = read_jsonl(metrics_path)
            if records:
                frame = pd.DataFrame(records)
                if "step" not in frame:
                    raise InputError(metrics_path, 1, "metrics records have no 'step'")
                tree.metrics[variant] = frame.sort_values("step", kind="stable").reset_index(drop=True)
        if variant not in tree.pretrain and variant not in tree.metrics:
            # A variant directory that is still running (no summary, no metrics yet).
            tree.pretrain.setdefault(variant, {})


def _list_pretrain_gaps(tree: ResultsTree) -> None:
    pre_dir = tree.root / "pretrain"
    bench_variants = set()
    if not tree.benchmarks.empty:
        bench_variants = set(tree.benchmarks.loc[tree.benchmarks["rule"] == "pretrain", "wildcards"])
    for variant in tree.variants:
        if variant not in tree.pretrained:  # no summary, metrics or benchmark to expect
            continue
        if pre_dir.is_dir():
            if not tree.pretrain.get(variant):
                tree.missing.append(f"pretrain/{variant}/summary.json missing")
            if variant not in tree.metrics:
                tree.missing.append(f"pretrain/{variant}/metrics.jsonl missing")
        if variant not in bench_variants:
            tree.missing.append(f"benchmarks/pretrain/{variant}.tsv missing")


# ---------------------------------------------------------------------------------------------
# Benchmarks and sweeps
# ---------------------------------------------------------------------------------------------


def read_benchmark(path: Path) -> pd.DataFrame:
    """One Snakemake benchmark TSV (header + one row per repeat); ``NA`` cells become NaN."""
    lines = [text for _, text in iter_lines(path) if text.strip()]
    if not lines:
        raise InputError(path, 1, "empty benchmark file")
    header = lines[0].split("\t")
    if "s" not in header or "max_rss" not in header:
        raise InputError(path, 1, f"not a Snakemake benchmark header (columns s, max_rss, ...): {header}")
    rows = []
    for number, text in enumerate(lines[1:], 2):
        cells = text.split("\t")
        if len(cells) != len(header):
            raise InputError(path, number, f"{len(cells)} cells for {len(header)} columns")
        row = {}
        for name, cell in zip(header, cells):
            if name == "h:m:s":
                row[name] = cell
                continue
            try:
                row[name] = float(cell) if cell not in ("", "NA", "-") else math.nan
            except ValueError:
                raise InputError(path, number, f"column {name}: {cell!r} is not a number") from None
        rows.append(row)
    return pd.DataFrame(rows, columns=header)


def _load_benchmarks(bench_dir: Path) -> pd.DataFrame:
    frames = []
    if bench_dir.is_dir():
        for path in sorted(bench_dir.rglob("*.tsv")):
            frame = read_benchmark(path)
            rel = path.relative_to(bench_dir)
            frame.insert(0, "rule", rel.parts[0] if len(rel.parts) > 1 else "")
            frame.insert(1, "wildcards", str(rel.with_suffix("")).split("/", 1)[-1])
            frames.append(frame)
    if not frames:
        log.info("%s: no benchmark files", bench_dir)
        return pd.DataFrame(columns=["rule", "wildcards", *BENCHMARK_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def _load_sweeps(sweep_dir: Path) -> dict[str, dict]:
    """``{study: {"trials", "images", "direction"}}``; absent sweeps are logged, not an error.

    ``direction`` is read from ``study.json`` / ``summary.json`` (key ``direction``) when the sweep
    wrote one, else ``maximize`` (every suite objective is a score).
    """
    sweeps: dict[str, dict] = {}
    if not sweep_dir.is_dir():
        log.info("%s: no sweeps (the Optuna sweep has not been run); sweep plots skipped", sweep_dir)
        return sweeps
    for study_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        trials = None
        trials_path = study_dir / "trials.csv"
        if trials_path.exists():
            with open(trials_path, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), [])
            for needed in ("number", "value", "state"):
                if needed not in header:
                    raise InputError(trials_path, 1, f"trials.csv has no {needed!r} column")
            trials = pd.read_csv(trials_path)
        direction = "maximize"
        for name in ("study.json", "summary.json"):
            if (study_dir / name).exists():
                meta = read_json(study_dir / name)
                if isinstance(meta, dict) and str(meta.get("direction", "")).lower() in ("maximize", "minimize"):
                    direction = str(meta["direction"]).lower()
                    break
        images = sorted(study_dir.glob("*.png")) + sorted(study_dir.glob("plots/*.png"))  # veco2.sweep: plots/
        if trials is None and not images:
            log.info("%s: neither trials.csv nor PNG plots; skipped", study_dir)
            continue
        sweeps[study_dir.name] = {"trials": trials, "images": images, "direction": direction}
    return sweeps


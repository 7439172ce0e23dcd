"""The paper's tables (main, per language, ablation, cost) from a
:class:`~veco2.report.load.ResultsTree`, each a :class:`Table` of full-precision numbers and the
strings a reader sees, written as CSV, Markdown, LaTeX and HTML.  What each table holds:
``docs/report.md#tables``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from veco2.config import read_yaml
from veco2.errors import ConfigError
from veco2.fileio import write_text
from veco2.xtreme import aggregate
from veco2.xtreme.aggregate import CATEGORIES, QA_TASKS, RETRIEVAL_TASKS, TASKS
from veco2.xtreme.registry import get_task

from . import bootstrap
from .load import DEMO_BANNER, ResultsTree

MISSING = "—"  # a value that should exist but does not (a gap in the results tree)
NOT_REPORTED = "n/r"  # a published reference row that does not report this column
NOT_APPLICABLE = "n/a"  # e.g. English / transfer gap for retrieval tasks (tested against English)

TASK_LABELS = {task: get_task(task).label for task in TASKS}  # the task files' `label`
CATEGORY_LABELS = {"classification": "Classification", "structured_prediction": "Structured",
                   "question_answering": "QA", "retrieval": "Retrieval"}  # fmt: skip
AVERAGE = "Avg"

REFERENCE_ROWS_FILE = Path(__file__).with_name("reference_rows.yaml")
_REFERENCE_KEYS = {**{task: task for task in TASKS}, "avg": AVERAGE}
REPORTED = "reported"  # prefix of a reference row's source, and its row kind


def load_reference_rows(path: str | Path = REFERENCE_ROWS_FILE) -> tuple[dict, ...]:
    """Published rows for the main table, from ``path`` (default :data:`REFERENCE_ROWS_FILE`).

    Every row needs a ``model`` and a ``source`` (paper or repository, table, arXiv id); its
    ``scores`` are percentages in [0, 100] keyed by XTREME task (QA tasks: ``[F1, EM]``) and
    ``avg``.  Returns dicts ``{"model", "source": "reported: <source>", task: value, "Avg": value}``
    with absent tasks left out.

    Raises:
        ConfigError: one line naming the file, the row and the problem.
    """
    data = read_yaml(path)
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{path}: expected a non-empty list under 'rows'")
    out = []
    for number, row in enumerate(rows, start=1):
        where = f"{path}: row {number}"
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: expected a mapping with model, source and scores")
        model, source, scores = row.get("model"), row.get("source"), row.get("scores")
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"{where}: 'model' must be a non-empty string")
        where = f"{path}: row {number} ({model})"
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"{where}: no 'source'; a published number needs its paper, table and arXiv id")
        if not isinstance(scores, dict) or not scores:
            raise ConfigError(f"{where}: 'scores' must map tasks to published values")
        unknown = sorted(set(scores) - set(_REFERENCE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown score key(s) {' '.join(map(str, unknown))}; "
                              f"known: {' '.join(_REFERENCE_KEYS)}")
        ref = {"model": model, "source": f"{REPORTED}: {' '.join(source.split())}"}
        for key, value in scores.items():
            qa = key in QA_TASKS
            values = value if qa and isinstance(value, list) else [value]
            if (qa and len(values) != 2) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 100 for v in values):
                shape = "[F1, EM], two numbers in 0..100" if qa else "a number in 0..100"
                raise ConfigError(f"{where}: {key} = {value!r}; expected {shape}")
            ref[_REFERENCE_KEYS[key]] = tuple(float(v) for v in values) if qa else float(value)
        out.append(ref)
    return tuple(out)


# Published zero-shot rows.  QA cells are (F1, EM); an absent task = not reported by the source.
REFERENCE_ROWS: tuple[dict, ...] = load_reference_rows()


@dataclass
class Table:
    """A report table: ``numeric`` for CSV, ``display`` (strings) for Markdown / LaTeX / HTML."""

    name: str  # file stem, also the HTML id ("main", "ablation", "per_language_xnli" ...)
    title: str
    numeric: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    row_kinds: list[str] = field(default_factory=list)  # per display row: "" or "reported"

    def to_markdown(self) -> str:
        return self.display.to_markdown(index=False, disable_numparse=True)

    def to_latex(self) -> str:
        """booktabs LaTeX (``hrules=True``); "±", "—", "Δ" become LaTeX commands."""
        styler = self.display.style.hide(axis="index").format(escape="latex")
        styler = styler.format_index(escape="latex", axis=1)
        caption = _latex_escape(self.title)
        latex = styler.to_latex(hrules=True, caption=caption, label=f"tab:{self.name}", column_format=None)
        for char, command in (("±", r"$\pm$"), ("—", "---"), ("Δ", r"$\Delta$"), ("−", "-")):
            latex = latex.replace(char, command)
        return latex

    def to_html(self) -> str:
        """An HTML ``<table id="table-{name}">``; reported reference rows get ``class="reported"`` and
        missing cells ``class="missing"`` so the page can style them."""
        head = "".join(f"<th>{escape(str(c))}</th>" for c in self.display.columns)
        body = []
        for i, row in enumerate(self.display.itertuples(index=False)):
            kind = self.row_kinds[i] if i < len(self.row_kinds) else ""
            cells = "".join(f'<td class="missing">{escape(str(v))}</td>' if str(v) == MISSING
                            else f"<td>{escape(str(v))}</td>" for v in row)
            body.append(f'<tr class="{kind}">{cells}</tr>' if kind else f"<tr>{cells}</tr>")
        return (f'<table id="table-{self.name}" class="report-table"><thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table>")

    def write(self, out_dir: str | Path) -> list[Path]:
        """Atomically write ``{name}.csv``, ``{name}.md`` and ``{name}.tex`` into ``out_dir``."""
        out_dir = Path(out_dir)
        paths = [out_dir / f"{self.name}.{ext}" for ext in ("csv", "md", "tex")]
        write_text(paths[0], self.numeric.to_csv(index=False, na_rep=""))
        notes = "".join(f"\n{note}\n" for note in self.notes)
        write_text(paths[1], f"**{self.title}**\n\n{self.to_markdown()}\n{notes}")
        write_text(paths[2], self.to_latex())
        return paths


def _latex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, repl)
    return text


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def fmt_number(value, decimals: int = 1, *, signed: bool = False, missing: str = MISSING) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def fmt_mean_std(mean, std, decimals: int = 1, *, missing: str = MISSING) -> str:
    """"mean ± std"; just the mean when std is undefined (a single seed); ``missing`` for no mean."""
    text = fmt_number(mean, decimals, missing=missing)
    if text == missing or std is None or (isinstance(std, float) and math.isnan(std)):
        return text
    return f"{text} ± {std:.{decimals}f}"


def _stat(tree: ResultsTree, variant: str, level: str, name: str) -> tuple[float, float, int]:
    """(mean, std, n_seeds) of a summarise() row, NaN/0 when absent."""
    s = tree.summary
    if s.empty:
        return math.nan, math.nan, 0
    row = s[(s["variant"] == variant) & (s["level"] == level) & (s["name"] == name)]
    if row.empty:
        return math.nan, math.nan, 0
    r = row.iloc[0]
    return float(r["mean"]), float(r["std"]), int(r["n_seeds"])


def _interval(tree: ResultsTree, variant: str, task: str, keys=None, reference: str | None = None):
    """The bootstrap interval of ``variant``'s task score (``keys``: default the task's score keys), or
    of its difference from ``reference``; None without per-example rows for both."""
    keys = list(keys or aggregate.TASK_METRICS[task])
    runs = tree.examples.get((variant, task))
    if runs is None:
        return None
    if reference is None:
        return bootstrap.score_interval(runs, tree.languages[task], keys)
    other = tree.examples.get((reference, task))
    return None if other is None else bootstrap.delta_interval(runs, other, tree.languages[task], keys)


def _average_interval(tree: ResultsTree, variant: str, reference: str | None = None):
    """The interval of the XTREME average (or its difference), when every task has per-example rows."""
    parts = []
    for task in TASKS:
        runs = tree.examples.get((variant, task))
        other = tree.examples.get((reference, task)) if reference is not None else None
        if runs is None or (reference is not None and other is None):
            return None
        parts.append((runs, other, tree.languages[task], aggregate.TASK_METRICS[task]))
    return bootstrap.average_interval(parts)


def _bounds(interval) -> tuple[float, float]:
    return (math.nan, math.nan) if interval is None else (interval.low, interval.high)


def fmt_interval(interval, decimals: int = 1, *, signed: bool = False) -> str:
    """"[low, high]" of a bootstrap interval ("" when there is none)."""
    if interval is None:
        return ""
    return (f" [{fmt_number(interval.low, decimals, signed=signed)}, "
            f"{fmt_number(interval.high, decimals, signed=signed)}]")


def fmt_delta(delta: float, interval, decimals: int = 1) -> str:
    """"+Δ [+low, +high]*" of a difference with its bootstrap interval (* = it excludes 0); just "+Δ"
    when there is no interval."""
    text = fmt_number(delta, decimals, signed=True)
    if interval is None:
        return text
    return text + fmt_interval(interval, decimals, signed=True) + ("*" if interval.excludes_zero else "")


def _metric_stat(tree: ResultsTree, variant: str, task: str, metric: str) -> tuple[float, float]:
    """Mean and sample std (ddof=1) over seeds of one metric's language mean (QA F1 / EM)."""
    if tree.runs.empty or metric not in tree.runs:  # e.g. no QA task in the tree: no exact_match column
        return math.nan, math.nan
    values = tree.runs.loc[(tree.runs["variant"] == variant) & (tree.runs["task"] == task), metric].dropna()
    if values.empty:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1))


def _seed_label(counts: list[int]) -> str:
    counts = [c for c in counts if c]
    if not counts:
        return MISSING
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}–{high}"


# ---------------------------------------------------------------------------------------------
# Deltas against the references: the mlm variant and the baselines
# ---------------------------------------------------------------------------------------------


def delta_references(tree: ResultsTree) -> list[str]:
    """The rows every Δ is taken against: the reference variant (mlm, when the tree has it), then
    each baseline."""
    return ([tree.reference] if tree.reference in tree.variants else []) + list(tree.baselines)


TRIVIAL_NOTE = ("trivial: what a model that learned nothing from the text scores (veco2.xtreme.trivial): the "
                "majority English training label (XNLI, PAWS-X), the most frequent English training tag for "
                "every word (UD-POS: NOUN; PAN-X: O, no entity), the first k context words with k the median "
                "English answer length (QA), chance (Tatoeba) and no pair extracted (BUCC).")


def delta_label(reference: str) -> str:
    return f"Δ {reference}"


def _source(tree: ResultsTree, model: str) -> str:
    if model == aggregate.TRIVIAL:
        return "this suite: trivial baseline (no model)"
    return "this suite: baseline (not pre-trained here)" if model in tree.baselines else "this suite"


# ---------------------------------------------------------------------------------------------
# Main XTREME table
# ---------------------------------------------------------------------------------------------


def main_table(tree: ResultsTree, *, decimals: int = 1, references: bool = True) -> Table:
    """Main XTREME table: our variants (mean ± std over seeds), then the reported reference rows.

    Numeric columns: ``model, source, seeds`` then per task ``{Label}`` / ``{Label} std``
    (QA: ``{Label} F1``, ``{Label} F1 std``, ``{Label} EM``, ``{Label} EM std``), the categories
    and ``Avg`` (the XTREME score: mean of the nine task scores), each with its std.
    """
    num_rows, disp_rows = [], []
    references_for_delta = delta_references(tree)
    for variant in tree.variants:
        num = {"model": variant, "source": _source(tree, variant), "seeds": None}
        disp = {"Model": variant, "Source": num["source"]}
        counts = []
        for task in TASKS:
            label = TASK_LABELS[task]
            if task in QA_TASKS:
                cells = []
                for metric, short in (("f1", "F1"), ("exact_match", "EM")):
                    mean, std = _metric_stat(tree, variant, task, metric)
                    num[f"{label} {short}"], num[f"{label} {short} std"] = mean, std
                    interval = _interval(tree, variant, task, [metric])
                    num[f"{label} {short} low"], num[f"{label} {short} high"] = _bounds(interval)
                    cells.append(fmt_mean_std(mean, std, decimals))
                f1_interval = _interval(tree, variant, task, ["f1"])
                disp[f"{label} (F1/EM)"] = MISSING if cells == [MISSING, MISSING] else \
                    "/".join(cells) + fmt_interval(f1_interval, decimals)
                counts.append(_stat(tree, variant, "task", task)[2])
            else:
                mean, std, n = _stat(tree, variant, "task", task)
                interval = _interval(tree, variant, task)
                num[label], num[f"{label} std"] = mean, std
                num[f"{label} low"], num[f"{label} high"] = _bounds(interval)
                disp[label] = fmt_mean_std(mean, std, decimals) + fmt_interval(interval, decimals)
                if task not in RETRIEVAL_TASKS:
                    counts.append(n)
        for category in CATEGORIES:
            mean, std, _ = _stat(tree, variant, "category", category)
            if category == "retrieval" and all(_stat(tree, variant, "task", t)[2] == 1 for t in RETRIEVAL_TASKS):
                std = math.nan  # single deterministic runs broadcast to every seed: their "std 0" is no spread
            num[CATEGORY_LABELS[category]], num[f"{CATEGORY_LABELS[category]} std"] = mean, std
            disp[CATEGORY_LABELS[category]] = fmt_mean_std(mean, std, decimals)
        mean, std, _ = _stat(tree, variant, "xtreme", "xtreme")
        interval = _average_interval(tree, variant)
        num[AVERAGE], num[f"{AVERAGE} std"] = mean, std
        num[f"{AVERAGE} low"], num[f"{AVERAGE} high"] = _bounds(interval)
        disp[AVERAGE] = fmt_mean_std(mean, std, decimals) + fmt_interval(interval, decimals)
        for scope in (ENGLISH, NON_ENGLISH):  # English and cross-lingual apart (the ablation tables per task)
            label = f"{AVERAGE} {scope}"
            scope_mean, scope_std, _ = _scope_stat(tree, variant, None, scope)
            scope_interval = _scope_interval(tree, variant, None, scope)
            num[label], num[f"{label} std"] = scope_mean, scope_std
            num[f"{label} low"], num[f"{label} high"] = _bounds(scope_interval)
            disp[label] = fmt_mean_std(scope_mean, scope_std, decimals) + fmt_interval(scope_interval, decimals)
        for reference in references_for_delta:  # the XTREME score's Δ against each reference row
            label = f"{AVERAGE} {delta_label(reference)}"
            delta = mean - _stat(tree, reference, "xtreme", "xtreme")[0] if variant != reference else math.nan
            num[label] = delta
            disp[label] = NOT_APPLICABLE if variant == reference else fmt_number(delta, decimals, signed=True)
        num["seeds"] = _seed_label(counts)
        disp["Seeds"] = num["seeds"]
        num_rows.append(num)
        disp_rows.append(disp)

    if references:
        for ref in REFERENCE_ROWS:
            num = {"model": ref["model"], "source": ref["source"], "seeds": None}
            disp = {"Model": f"{ref['model']} ({REPORTED})", "Source": ref["source"]}
            for task in TASKS:
                label, value = TASK_LABELS[task], ref.get(task)
                if task in QA_TASKS:
                    f1, em = value if value is not None else (math.nan, math.nan)
                    num.update({f"{label} F1": f1, f"{label} F1 std": math.nan, f"{label} EM": em,
                                f"{label} EM std": math.nan})
                    disp[f"{label} (F1/EM)"] = NOT_REPORTED if value is None else \
                        f"{fmt_number(f1, decimals)}/{fmt_number(em, decimals)}"
                else:
                    num[label], num[f"{label} std"] = (math.nan if value is None else value), math.nan
                    disp[label] = fmt_number(value, decimals, missing=NOT_REPORTED)
            for category in CATEGORIES:  # the sources print no category scores
                num[CATEGORY_LABELS[category]] = num[f"{CATEGORY_LABELS[category]} std"] = math.nan
                disp[CATEGORY_LABELS[category]] = NOT_REPORTED
            num[AVERAGE], num[f"{AVERAGE} std"] = ref.get(AVERAGE, math.nan), math.nan
            disp[AVERAGE] = fmt_number(ref.get(AVERAGE), decimals, missing=NOT_REPORTED)
            for scope in (ENGLISH, NON_ENGLISH):
                num[f"{AVERAGE} {scope}"] = num[f"{AVERAGE} {scope} std"] = math.nan
                disp[f"{AVERAGE} {scope}"] = NOT_REPORTED
            for reference in references_for_delta:  # never a delta between published and our numbers
                num[f"{AVERAGE} {delta_label(reference)}"] = math.nan
                disp[f"{AVERAGE} {delta_label(reference)}"] = NOT_APPLICABLE
            disp["Seeds"] = NOT_REPORTED
            num_rows.append(num)
            disp_rows.append(disp)

    numeric = pd.DataFrame(num_rows)
    display = pd.DataFrame(disp_rows)
    first = ["Model", "Source", "Seeds"]
    display = display[first + [c for c in display.columns if c not in first]] if disp_rows else display
    notes = [
        "Values: mean ± sample std (ddof=1) over fine-tuning seeds; one value where there is a single seed "
        "(retrieval tasks are deterministic, seed0). QA cells are F1/EM. Avg = mean of the nine task scores "
        "(QA task score = (F1 + EM) / 2); categories = mean of their tasks. "
        f"{AVERAGE} {ENGLISH} = mean of the English scores of the tasks with an English test set; "
        f"{AVERAGE} {NON_ENGLISH} = mean over the nine tasks of their non-English mean (per task: the "
        "transfer and ablation_en tables). "
        + bootstrap.note().split(";")[0] + " of the task score (QA: of F1), where the runs recorded "
        "per-example rows.",
        f"{MISSING} = missing from the results tree (see missing.txt); {NOT_REPORTED} = not reported by the source. "
        "Rows marked (reported) are published numbers, copied for reference and never included in any of "
        "our averages or deltas; their Source cell names the paper (arXiv id) and table they come from.",
    ]
    if references_for_delta:
        notes.append(f"{' / '.join(f'{AVERAGE} {delta_label(r)}' for r in references_for_delta)}: the row's "
                     f"XTREME score minus that of {' / '.join(references_for_delta)}"
                     + (" (baseline: fine-tuned and scored here from the published checkpoint, not pre-trained "
                        "here; the starting model of the continued pre-training)." if tree.baselines else "."))
    if aggregate.TRIVIAL in tree.variants:
        notes.append(TRIVIAL_NOTE)
    kinds = [""] * len(tree.variants) + [REPORTED] * (len(disp_rows) - len(tree.variants))
    return Table("main", "XTREME zero-shot cross-lingual transfer results", numeric, display, notes, kinds)


# ---------------------------------------------------------------------------------------------
# Per-language tables
# ---------------------------------------------------------------------------------------------

ENGLISH = "en"
OTHERS = "mean (non-en)"
GAP = "gap (en − rest)"


def per_language_means(tree: ResultsTree, task: str) -> pd.DataFrame:
    """``variant x language`` mean over seeds of the per-language score (NaN where missing)."""
    langs = tree.languages.get(task, [])
    pl = tree.per_language
    sub = pl[pl["task"] == task] if not pl.empty else pl
    means = sub.groupby(["variant", "language"])["score"].mean().unstack() if not sub.empty else pd.DataFrame()
    return means.reindex(index=tree.variants, columns=langs)


def per_language_table(tree: ResultsTree, task: str, *, decimals: int = 1) -> Table:
    """Languages as columns (English first), the mean of the non-English languages and the gap.

    Cell = mean over seeds of the language's headline metric ((F1 + EM) / 2 for QA tasks).  The
    gap is ``en - mean(non-en)``; retrieval tasks pair every language with English and have no
    English test set, so their English and gap cells are "n/a".
    """
    means = per_language_means(tree, task)
    langs = list(means.columns)
    has_english = ENGLISH in langs and task not in RETRIEVAL_TASKS
    others = [lang for lang in langs if lang != ENGLISH]
    order = ([ENGLISH] if has_english else []) + others
    numeric = means[order].copy()
    # A row with a missing language has no mean: never a silently shorter average.
    numeric[OTHERS] = numeric[others].mean(axis=1, skipna=False) if others else math.nan
    numeric[GAP] = numeric[ENGLISH] - numeric[OTHERS] if has_english else math.nan
    references = delta_references(tree)
    for reference in references:  # the cross-lingual (non-English) mean against each reference row
        column = f"{OTHERS} {delta_label(reference)}"
        base = numeric.loc[reference, OTHERS] if reference in numeric.index else math.nan
        numeric[column] = [value - base if variant != reference else math.nan
                           for variant, value in zip(numeric.index, numeric[OTHERS])]
    numeric.insert(0, "variant", numeric.index)
    numeric = numeric.reset_index(drop=True)

    # Paired bootstrap intervals, where the runs recorded per-example rows: English and its Δ against
    # the trivial row; the non-English mean's Δ against each reference.
    keys = aggregate.TASK_METRICS[task]
    intervals: dict[tuple[str, str], object] = {}
    for variant in numeric["variant"]:
        runs = tree.examples.get((variant, task))
        if runs is None:
            continue
        if has_english:
            intervals[(variant, ENGLISH)] = bootstrap.score_interval(runs, [ENGLISH], keys)
            trivial = tree.examples.get((aggregate.TRIVIAL, task))
            if trivial is not None and variant != aggregate.TRIVIAL:
                intervals[(variant, "trivial")] = bootstrap.delta_interval(runs, trivial, [ENGLISH], keys)
        for reference in references:
            other = tree.examples.get((reference, task))
            if other is not None and others and variant != reference:
                intervals[(variant, reference)] = bootstrap.delta_interval(runs, other, others, keys)
    for name, key in ([(ENGLISH, ENGLISH), (f"{ENGLISH} Δ trivial", "trivial")] if has_english else []) + \
            [(f"{OTHERS} {delta_label(r)}", r) for r in references]:
        found = [intervals.get((variant, key)) for variant in numeric["variant"]]
        if not any(found):
            continue
        if key == "trivial":
            numeric[name] = [i.estimate if i else math.nan for i in found]
        numeric[f"{name} low"] = [i.low if i else math.nan for i in found]
        numeric[f"{name} high"] = [i.high if i else math.nan for i in found]
        if key != ENGLISH:
            numeric[f"{name} significant"] = [i.excludes_zero if i else None for i in found]

    display = numeric[[c for c in numeric.columns if not c.endswith((" low", " high", " significant"))]].copy()
    display = display.astype(object)
    for col in display.columns[1:]:
        if col == GAP:
            display[col] = [fmt_number(v, decimals, signed=True) if has_english else NOT_APPLICABLE
                            for v in numeric[col]]
        elif " Δ " in col:
            reference = col.rsplit(" Δ ", 1)[1]
            key = "trivial" if col == f"{ENGLISH} Δ trivial" else reference
            display[col] = [NOT_APPLICABLE if variant == reference else fmt_delta(v, intervals.get((variant, key)), decimals)
                            for variant, v in zip(numeric["variant"], numeric[col])]
        elif col == ENGLISH:
            display[col] = [fmt_number(v, decimals) + fmt_interval(intervals.get((variant, ENGLISH)), decimals)
                            for variant, v in zip(numeric["variant"], numeric[col])]
        else:
            display[col] = [fmt_number(v, decimals) for v in numeric[col]]
    display = display.rename(columns={"variant": "Model"})
    metric = "(F1 + EM) / 2" if task in QA_TASKS else " / ".join(
        "F1" if key == "f1" else key.replace("_", " ") for key in get_task(task).score_keys)
    notes = [f"{TASK_LABELS[task]} per language: {metric}, mean over seeds. {GAP} = English minus the mean of the "
             f"other languages (the cross-lingual transfer gap). {MISSING} = missing."]
    if references:
        notes.append(f"{OTHERS} Δ X = the row's mean over the non-English languages minus that of X.")
    if intervals:
        notes.append(bootstrap.note() + (f" {ENGLISH} Δ trivial = English minus the trivial baseline's English."
                                         if has_english and aggregate.TRIVIAL in tree.variants else ""))
    if task in RETRIEVAL_TASKS:
        notes.append(f"{TASK_LABELS[task]} pairs every language with English: there is no English column and "
                     f"no transfer gap ({NOT_APPLICABLE}).")
    return Table(f"per_language_{task}", f"{TASK_LABELS[task]}: results per language", numeric, display, notes)


# ---------------------------------------------------------------------------------------------
# Ablation table
# ---------------------------------------------------------------------------------------------


#: The language sets a score is averaged over: every language (the XTREME convention), English
#: alone, and the non-English languages (the cross-lingual transfer the method is about).
ALL, NON_ENGLISH = "all", "non-en"


def scope_languages(tree: ResultsTree, task: str, scope: str) -> list[str]:
    """The task's languages in ``scope``; none for English on a retrieval task (every language is
    paired with English; there is no English test set)."""
    langs = tree.languages.get(task, [])
    if scope == ENGLISH:
        return [ENGLISH] if ENGLISH in langs and task not in RETRIEVAL_TASKS else []
    if scope == NON_ENGLISH:
        return [lang for lang in langs if lang != ENGLISH]
    return list(langs)


def _scope_seed_scores(tree: ResultsTree, variant: str, task: str, scope: str) -> dict[int, float]:
    """Per seed, the mean over the scope's languages of the per-language score (none if one lacks)."""
    langs = scope_languages(tree, task, scope)
    pl = tree.per_language
    if not langs or pl.empty:
        return {}
    sub = pl[(pl["variant"] == variant) & (pl["task"] == task) & pl["language"].isin(langs)]
    return {int(seed): float(g["score"].mean()) for seed, g in sub.groupby("seed") if len(g) == len(langs)}


def _scope_stat(tree: ResultsTree, variant: str, task: str | None, scope: str) -> tuple[float, float, int]:
    """(mean, std, n_seeds) of a task's scope score over seeds; ``task`` None: the mean over the tasks
    that have the scope (English: those with an English test set), per fine-tuning seed, a
    single-run (retrieval) task counting for every seed, as the XTREME score does."""
    if scope == ALL:
        return _stat(tree, variant, "task", task) if task else _stat(tree, variant, "xtreme", "xtreme")
    if task is not None:
        values = list(_scope_seed_scores(tree, variant, task, scope).values())
    else:
        per_task = [_scope_seed_scores(tree, variant, t, scope) for t in TASKS if scope_languages(tree, t, scope)]
        if not per_task or not all(per_task):
            return math.nan, math.nan, 0
        seeds = sorted({seed for scores in per_task if len(scores) > 1 for seed in scores}) or [None]
        values = []
        for seed in seeds:  # None: every task is one run, so there is one value and no spread
            parts = [next(iter(scores.values())) if len(scores) == 1 else scores.get(seed, math.nan)
                     for scores in per_task]
            values.append(float(np.mean(parts)))
        values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan, 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan, len(values)


def _scope_interval(tree: ResultsTree, variant: str, task: str | None, scope: str, reference: str | None = None):
    """The bootstrap interval of a scope score (or its difference from ``reference``); ``task`` None:
    of the mean over the tasks that have the scope.  None without per-example rows."""
    if scope == ALL:
        return _interval(tree, variant, task, reference=reference) if task else \
            _average_interval(tree, variant, reference)
    tasks = [task] if task else [t for t in TASKS if scope_languages(tree, t, scope)]
    parts = []
    for name in tasks:
        runs = tree.examples.get((variant, name))
        other = tree.examples.get((reference, name)) if reference is not None else None
        if runs is None or (reference is not None and other is None) or not scope_languages(tree, name, scope):
            return None
        parts.append((runs, other, scope_languages(tree, name, scope), aggregate.TASK_METRICS[name]))
    return bootstrap.average_interval(parts) if parts else None  # one task: its own interval


def significance(delta: float, std_variant: float, std_baseline: float) -> bool | None:
    """Whether a delta stands out of the seed noise: ``|Δ| >= max(std_variant, std_baseline)``.

    Only the stds that exist are used (a single seed has none).  Returns None ("not assessable")
    when neither exists, e.g. the deterministic retrieval tasks.  This is the issue's rule ("a
    difference smaller than the seed std is not significant"), a noise screen rather than a
    statistical test; with a handful of seeds nothing stronger is meaningful.
    """
    if delta is None or math.isnan(delta):
        return None
    stds = [s for s in (std_variant, std_baseline) if s is not None and not math.isnan(s)]
    if not stds:
        return None
    return abs(delta) >= max(stds)


#: scope -> (table name, title, what its cells are): the cross-lingual table first, the method's claim.
ABLATION_TABLES = {
    NON_ENGLISH: ("transfer", "Cross-lingual transfer: the non-English mean of each task",
                  "Mean over each task's non-English test languages: zero-shot cross-lingual transfer, what "
                  "the alignment objectives are meant to improve; Avg = mean over the nine tasks."),
    ENGLISH: ("ablation_en", "English (the fine-tuning language)",
              f"English test sets only (the fine-tuning language); Avg = mean over the tasks with an English "
              f"test set; {NOT_APPLICABLE} = the task has none (retrieval pairs every language with English)."),
    ALL: ("ablation", "Ablation of the alignment objectives, all languages",
          "Scores over all test languages, English included (the XTREME convention); Avg = the XTREME score."),
}


def ablation_table(tree: ResultsTree, *, decimals: int = 1, variants=None, baseline: str | None = None,
                   scope: str = ALL) -> Table:
    """Rows = every model of the tree (default ``tree.variants``: the pre-trained variants, then the
    baselines), columns = the nine tasks and Avg: "mean ± std (Δ)", each the score over ``scope``'s
    languages (:data:`ALL`, :data:`ENGLISH` or the :data:`NON_ENGLISH` mean; "n/a" where a task has
    no such language, as retrieval has no English test set).

    Δ = row mean − reference mean (full precision), against ``baseline`` (mlm) and then against
    each baseline of the tree (the starting model), separated by ";" in the cell; with per-example
    rows, the paired bootstrap interval follows and "*" marks one that excludes 0; without them the
    mark is "n.s." when :func:`significance` is False and "?" when it cannot be assessed (single run).
    Avg = the XTREME score (all) or the mean over the tasks that have the scope.
    Numeric columns per task: ``{Label}``, ``{Label} std``, ``{Label} Δ``, ``{Label} significant``,
    ``{Label} Δ low``, ``{Label} Δ high`` (against ``baseline``) and the same with `` B`` appended
    for each baseline ``B``.
    """
    variants = list(tree.variants if variants is None else variants)
    baseline = baseline or tree.reference
    references = [baseline] + [b for b in tree.baselines if b != baseline]
    name, title, scope_note = ABLATION_TABLES[scope]
    columns = [(task, TASK_LABELS[task]) for task in TASKS] + [(None, AVERAGE)]
    num_rows, disp_rows = [], []
    for variant in variants:
        num, disp = {"variant": variant}, {"Variant": variant}
        for task, label in columns:
            if task is not None and not scope_languages(tree, task, scope) and task in tree.languages:
                num.update({label: math.nan, f"{label} std": math.nan})
                disp[label] = NOT_APPLICABLE
                continue
            mean, std, _ = _scope_stat(tree, variant, task, scope)
            num.update({label: mean, f"{label} std": std})
            marks = []
            for reference in references:
                suffix = "" if reference == baseline else f" {reference}"
                base_mean, base_std, _ = _scope_stat(tree, reference, task, scope)
                delta = mean - base_mean if variant != reference else math.nan
                interval = _scope_interval(tree, variant, task, scope, reference) if variant != reference else None
                if interval is not None:  # the paired bootstrap decides
                    sig = interval.excludes_zero
                else:  # no per-example rows (older results): the seed-std noise screen
                    sig = significance(delta, std, base_std) if variant != reference else None
                low, high = _bounds(interval)
                num.update({f"{label} Δ{suffix}": delta, f"{label} significant{suffix}": sig,
                            f"{label} Δ low{suffix}": low, f"{label} Δ high{suffix}": high})
                if variant != reference:
                    screen = "" if interval is not None or sig else (" n.s." if sig is False else " ?")
                    marks.append(fmt_delta(delta, interval, decimals) + screen)
            text = fmt_mean_std(mean, std, decimals)
            if text != MISSING and marks:
                text += f" ({'; '.join(marks)})"
            disp[label] = text
        num_rows.append(num)
        disp_rows.append(disp)
    against = " and ".join(references)
    notes = [f"{scope_note} mean ± std over seeds (Δ = row − {'; row − '.join(references)}). {bootstrap.note()} "
             "Where a run has no per-example rows (results written before veco2 recorded them): n.s. = |Δ| "
             "is smaller than the larger seed std of the two rows, a noise screen, not a test; ?: single "
             f"run, nothing to judge by. {MISSING} = missing."]
    if aggregate.TRIVIAL in tree.variants:
        notes.append(TRIVIAL_NOTE)
    if tree.baselines:
        notes.append(f"Baselines ({', '.join(tree.baselines)}): fine-tuned and scored here from their published "
                     "checkpoints, without pre-training here; the starting model of the continued pre-training.")
    return Table(name, f"{title} (Δ against {against})", pd.DataFrame(num_rows), pd.DataFrame(disp_rows), notes)


# ---------------------------------------------------------------------------------------------
# Cost table
# ---------------------------------------------------------------------------------------------


def _median_tokens_per_s(tree: ResultsTree, variant: str) -> float:
    """summary.json's median_tokens_per_s, else the median of metrics.jsonl (first window skipped, as the
    trainer does: it includes start-up)."""
    summary = tree.pretrain.get(variant) or {}
    if summary.get("median_tokens_per_s"):
        return float(summary["median_tokens_per_s"])
    frame = tree.metrics.get(variant)
    if frame is not None and "tokens_per_s" in frame and len(frame) > 1:
        return float(np.median(frame["tokens_per_s"].iloc[1:]))
    return math.nan


def _median_cpu_per_token(tree: ResultsTree, variant: str) -> float:
    """summary.json's median CPU seconds per token (the trainer's own process, all its threads)."""
    value = (tree.pretrain.get(variant) or {}).get("median_cpu_seconds_per_token")
    return float(value) if value else math.nan


def cost_table(tree: ResultsTree, *, baseline: str | None = None) -> Table:
    """Pre-training cost per variant.

    Columns: steps, tokens, tokens/s (median over log windows), CPU time per 1,000 tokens (median
    over log windows of the training process's CPU time, all its threads), the torch threads the
    job ran with, relative cost, peak memory = the largest ``max_rss`` of the Snakemake benchmark
    file (MB, host RSS), wall time = the benchmark's mean ``s`` over its repeats.

    Relative cost = variant CPU time per token ÷ baseline CPU time per token where both runs
    recorded it: a job that shared its cores with another is not charged for the time it waited,
    so the ratio does not depend on what ran beside it.  Runs without CPU times fall back to the
    wall-clock ratio (baseline tokens/s ÷ variant tokens/s), marked "(wall)".
    """
    bench = tree.benchmarks
    baseline = baseline or tree.reference
    base_tps = _median_tokens_per_s(tree, baseline) if baseline in tree.variants else math.nan
    base_cpu = _median_cpu_per_token(tree, baseline) if baseline in tree.variants else math.nan
    num_rows, disp_rows = [], []
    for variant in tree.pretrained:  # baselines and the trivial row: not pre-trained here
        summary = tree.pretrain.get(variant) or {}
        tps = _median_tokens_per_s(tree, variant)
        cpu = _median_cpu_per_token(tree, variant)
        rows = bench[(bench["rule"] == "pretrain") & (bench["wildcards"] == variant)] if not bench.empty else bench
        peak = float(rows["max_rss"].max()) if not rows.empty else math.nan
        wall = float(rows["s"].mean()) if not rows.empty else math.nan
        by_cpu = not (math.isnan(cpu) or math.isnan(base_cpu))
        if by_cpu:
            relative = cpu / base_cpu
        else:
            relative = base_tps / tps if tps and not math.isnan(tps) else math.nan
        num = {"variant": variant, "steps": summary.get("steps", math.nan), "tokens": summary.get("tokens", math.nan),
               "tokens_per_s": tps, "cpu_seconds_per_token": cpu, "threads": summary.get("torch_threads", math.nan),
               "relative_cost": relative, "relative_cost_measure": "cpu" if by_cpu else "wall",
               "peak_rss_mb": peak, "wall_time_s": wall}
        num_rows.append(num)
        disp_rows.append({
            "Variant": variant,
            "Steps": fmt_number(num["steps"], 0),
            "Tokens": MISSING if _nan(num["tokens"]) else f"{int(num['tokens']):,}",
            "Tokens/s": fmt_number(tps, 0),
            "CPU s / 1k tokens": fmt_number(cpu * 1000, 3),
            "Threads": fmt_number(num["threads"], 0),
            f"Cost vs {baseline} (×)": fmt_number(relative, 2) + ("" if by_cpu or _nan(relative) else " (wall)"),
            "Peak memory (MB RSS)": fmt_number(peak, 0),
            "Wall time": MISSING if _nan(wall) else _hms(wall),
        })
    notes = [f"Cost vs {baseline} = variant CPU time per token ÷ {baseline} CPU time per token (>1 = dearer): "
             "CPU time of the training process (all its threads; each job runs the threads its rule was "
             "given), median over the metrics-log windows, so jobs that shared cores are not charged for "
             f"waiting. \"(wall)\": no CPU time recorded, {baseline} tokens/s ÷ variant tokens/s instead. "
             "Tokens/s: median over the metrics-log windows (summary.json), wall clock. Peak memory: max_rss "
             "of the Snakemake benchmark file (host memory, MB); wall time: its mean s over repeats. "
             f"{MISSING} = missing."]
    return Table("cost", "Pre-training cost per variant", pd.DataFrame(num_rows), pd.DataFrame(disp_rows), notes)


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _probe_statistics(tree: ResultsTree, variant: str) -> dict | None:
    """``{0: {lang: ExampleStatistics}}`` of a variant's word-translation probe at its reported layer
    (one run: seed 0), for the bootstrap; None without a probe."""
    from veco2.xtreme.metrics import ExampleStatistics

    probe = (tree.pretrain.get(variant) or {}).get("word_translation")
    if not probe or not probe.get("items"):
        return None
    rows = probe["correct"][str(probe["layer"])]
    return {0: {lang: ExampleStatistics("mean", ["forward", "backward"], np.asarray(r, dtype=np.float64))
                for lang, r in rows.items()}}


def probe_table(tree: ResultsTree, *, decimals: int = 1) -> Table:
    """Alignment probes of the pre-trained encoders (``summary.json``): word-translation accuracy on
    held-out dictionary entries (``veco2.probes``) at the retrieval layer, its Δ against the reference
    with a paired bootstrap interval over the word pairs, every layer's accuracy, and the held-out
    retrieval check.  Means over the languages the probe has items for."""
    reference = tree.reference
    base = _probe_statistics(tree, reference)
    num_rows, disp_rows = [], []
    for variant in tree.pretrained:
        summary = tree.pretrain.get(variant) or {}
        probe = summary.get("word_translation") or {}
        stats = _probe_statistics(tree, variant)
        languages = sorted(stats[0]) if stats else []
        mean = float(np.mean([probe["by_layer"][str(probe["layer"])][lang] for lang in languages])) \
            if languages else math.nan
        interval = None
        if stats and base and variant != reference and sorted(base[0]) == languages:
            interval = bootstrap.delta_interval(stats, base, languages, ["forward", "backward"])
        retrieval = (summary.get("retrieval") or {}).get("accuracy", {}).get("mean", math.nan)
        num = {"variant": variant, "layer": probe.get("layer", math.nan), "languages": len(languages),
               "word_pairs": sum(probe.get("items", {}).values()), "word_translation": mean,
               f"word_translation Δ {reference}": interval.estimate if interval else math.nan,
               f"word_translation Δ {reference} low": interval.low if interval else math.nan,
               f"word_translation Δ {reference} high": interval.high if interval else math.nan,
               f"word_translation Δ {reference} significant": interval.excludes_zero if interval else None,
               "heldout_retrieval": retrieval}
        disp = {"Variant": variant, "Layer": fmt_number(num["layer"], 0), "Word pairs": str(num["word_pairs"]),
                "Word translation": fmt_number(mean, decimals),
                f"Δ {reference}": NOT_APPLICABLE if variant == reference else (
                    fmt_delta(interval.estimate, interval, decimals) if interval else MISSING),
                "Held-out retrieval": fmt_number(retrieval, decimals)}
        for layer, scores in sorted((probe.get("by_layer") or {}).items(), key=lambda kv: int(kv[0])):
            value = float(np.mean([scores[lang] for lang in languages])) if languages else math.nan
            num[f"word_translation layer {layer}"] = value
            disp[f"WT layer {layer}"] = fmt_number(value, decimals)
        num_rows.append(num)
        disp_rows.append(disp)
    notes = ["Word translation: each held-out dictionary word pair (an entry found in the dev pairs that never was "
             "a synonym pair of the training shards, so the token loss never saw it) embedded in its own sentences "
             "(mean of its subword vectors); accuracy of retrieving the translation by cosine among the language's "
             "pairs, both directions averaged, mean over languages (veco2.probes). Held-out retrieval: the trainer's "
             "Tatoeba-style check on dev pairs at the same layer. " + bootstrap.note().replace("test examples and seeds",
                                                                                               "word pairs")]
    return Table("probes", "Alignment probes of the pre-trained encoders", pd.DataFrame(num_rows),
                 pd.DataFrame(disp_rows), notes)


def build_tables(tree: ResultsTree, *, decimals: int = 1) -> list[Table]:
    """Every table of the report: transfer (non-English), main, English, all-language ablation, cost,
    probes, then one per-language table per task present."""
    ablations = [ablation_table(tree, decimals=decimals, scope=scope) for scope in ABLATION_TABLES]
    tables = [ablations[0], main_table(tree, decimals=decimals), *ablations[1:], cost_table(tree),
              probe_table(tree, decimals=decimals)]
    tables += [per_language_table(tree, task, decimals=decimals) for task in TASKS if task in tree.languages]
    if tree.demo:  # the caption of every Markdown / LaTeX / HTML table says so
        for table in tables:
            table.title = f"{table.title}. {DEMO_BANNER}"
    return tables

"""Reporting layer: the results tree of one scale -> the paper's tables, figures and an HTML report.

    from veco2.report import build_report
    outputs = build_report("results/demo")          # writes results/demo/report/

Modules, top to bottom: :mod:`.load` (read the tree, list the gaps), :mod:`.tables` (main XTREME,
per-language, ablation, cost tables as CSV / Markdown / LaTeX), :mod:`.plots` (PNG + SVG
figures), :mod:`.html` (the self-contained page), :mod:`.cli` (``veco2 report``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from veco2.fileio import write_text

from .load import ResultsTree, load_results

log = logging.getLogger(__name__)

__all__ = ["ReportOutputs", "ResultsTree", "build_report", "load_results"]


@dataclass
class ReportOutputs:
    """Paths written by :func:`build_report` and the gaps it found."""

    out_dir: Path
    html: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    missing_file: Path | None = None
    missing: list[str] = field(default_factory=list)


def build_report(results_dir: str | Path, out_dir: str | Path | None = None, *, template: str | Path | None = None,
                 decimals: int = 1, reference: str | None = None) -> ReportOutputs:
    """Write the full report of ``results_dir`` into ``out_dir`` (default ``results_dir/report``).

    Outputs: ``tables/{main,ablation,cost,per_language_TASK}.{csv,md,tex}``,
    ``figures/*.{png,svg}``, ``missing.txt`` (one gap per line, empty when complete) and
    ``report.html``.  Every file is written atomically.  Gaps are logged as one warning.
    """
    from . import plots
    from .html import render_html
    from .tables import build_tables

    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir else results_dir / "report"
    tree = load_results(results_dir, **({"reference": reference} if reference else {}))
    tables = build_tables(tree, decimals=decimals)
    table_paths = [path for table in tables for path in table.write(out_dir / "tables")]

    figure_records, figure_paths = [], []
    for name, caption, fig in plots.all_figures(tree):
        encoded = plots.save_figure(fig, out_dir / "figures", name)
        figure_records.append({"name": name, "caption": caption, "png": encoded["png"]})
        figure_paths += [out_dir / "figures" / f"{name}.{fmt}" for fmt in ("png", "svg")]

    missing_file = out_dir / "missing.txt"
    write_text(missing_file, "".join(f"{gap}\n" for gap in tree.missing))
    if tree.missing:
        log.warning("%s: %d gap(s) in the results, shown as '—' in the report:\n  %s", results_dir,
                    len(tree.missing), "\n  ".join(tree.missing))

    html_path = out_dir / "report.html"
    write_text(html_path, render_html(tree, tables, figure_records, template=template))
    return ReportOutputs(out_dir=out_dir, html=html_path, tables=table_paths, figures=figure_paths,
                         missing_file=missing_file, missing=list(tree.missing))

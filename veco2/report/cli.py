"""``veco2 report RESULTS_DIR [--out DIR]``: build the tables, figures and HTML report of one
results directory (works inside and outside Snakemake).  ``register(subparsers)`` is called by
:mod:`veco2.cli`."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    """Add the ``report`` sub-command."""
    p = subparsers.add_parser("report", help="tables, figures and the HTML report of a results directory",
                              description="Read RESULTS_DIR (xtreme/, pretrain/, benchmarks/, sweeps/) and write "
                                          "tables (CSV, Markdown, LaTeX), figures (PNG, SVG), missing.txt and a "
                                          "self-contained report.html.")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="one scale's results directory, e.g. results/demo")
    p.add_argument("--out", default=None, help="output directory (default RESULTS_DIR/report)")
    p.add_argument("--template", default=None, help="Jinja2 template (default: the one shipped in veco2/report/templates/)")
    p.add_argument("--reference", default=None,
                   help="the variant every ablation delta is taken against (default mlm)")
    p.add_argument("--decimals", type=int, default=1, help="digits shown in the tables (default 1; CSV keeps all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import build_report

    outputs = build_report(args.results_dir, args.out, template=args.template, decimals=args.decimals,
                           reference=args.reference)
    if outputs.missing:
        print(f"veco2 report: warning: {len(outputs.missing)} gap(s) in the results (see {outputs.missing_file}):",
              file=sys.stderr)
        for gap in outputs.missing:
            print(f"  {gap}", file=sys.stderr)
    print(f"{outputs.html}: report with {len(outputs.tables) // 3} tables and {len(outputs.figures) // 2} figures")
    return 0

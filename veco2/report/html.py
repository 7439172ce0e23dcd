"""The self-contained HTML report: Jinja2 template ``veco2/report/templates/report.html.j2`` (package data).

Self-contained means no request leaves the file: CSS is inline, figures are embedded as
base64 ``data:`` PNGs, nothing references an ``http(s)://`` URL.  Text from the results tree
(variant names, configs) is HTML-escaped by Jinja2's autoescape.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import jinja2

from veco2.errors import Veco2Error
from veco2.provenance import git_commit, library_versions

from .load import DEMO_BANNER, ResultsTree
from .tables import Table

DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "templates" / "report.html.j2"  # installed with the package

# A src/href/url() that would make the browser fetch something over the network.
EXTERNAL_REFERENCE = re.compile(r"""(?:\b(?:src|href|action|poster|data)\s*=\s*["']?\s*|url\(\s*["']?\s*)"""
                                r"""(?:https?:)?//""", re.IGNORECASE)


def external_references(html: str) -> list[str]:
    """The ``src=`` / ``href=`` / ``url(...)`` references to network URLs in ``html`` (should be none)."""
    return [html[max(m.start() - 40, 0): m.end() + 40] for m in EXTERNAL_REFERENCE.finditer(html)]


def render_html(tree: ResultsTree, tables: list[Table], figures: list[dict], *, template: str | Path | None = None,
                title: str | None = None) -> str:
    """Render the report page.

    Args:
        tree: the loaded results (config + provenance of every run, the gap list).
        tables: :func:`veco2.report.tables.build_tables` output.
        figures: ``{"name", "caption", "png": bytes}`` per figure.
        template: a Jinja2 template path (default: :data:`DEFAULT_TEMPLATE`, shipped with the package).
    """
    path = Path(template) if template else DEFAULT_TEMPLATE
    if not path.is_file():
        raise Veco2Error(f"{path}: report template not found (pass --template)")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(path.parent)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    page = env.get_template(path.name)
    by_name = {t.name: t for t in tables}
    configs = {variant: json.dumps(summary.get("config"), indent=2, sort_keys=True)
               for variant, summary in tree.pretrain.items() if summary.get("config") is not None}
    provenance = tree.provenance.fillna("—").to_dict("records") if not tree.provenance.empty else []
    html = page.render(
        title=title or f"veco2 results: {tree.root.name}",
        results_dir=str(tree.root),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        report_commit=git_commit(),
        report_versions=library_versions(),
        transfer=by_name.get("transfer"),
        main=by_name.get("main"),
        ablation_en=by_name.get("ablation_en"),
        ablation=by_name.get("ablation"),
        cost=by_name.get("cost"),
        probes=by_name.get("probes"),
        per_language=[t for t in tables if t.name.startswith("per_language_")],
        figures=[{**f, "data": base64.b64encode(f["png"]).decode("ascii")} for f in figures],
        sweep_images=[{"study": study, "name": image.name,
                       "data": base64.b64encode(image.read_bytes()).decode("ascii")}
                      for study, info in tree.sweeps.items() for image in info["images"]],
        missing=tree.missing,
        demo_banner=DEMO_BANNER if tree.demo else None,
        configs=configs,
        provenance=provenance,
        benchmarks=tree.benchmarks.fillna("—").to_dict("records") if not tree.benchmarks.empty else [],
        by_layer_available=not tree.by_layer.empty,
    )
    leaks = external_references(html)
    if leaks:  # a template edit must never make the report fetch anything
        raise Veco2Error(f"report HTML would load external resources: {leaks[:3]}")
    return html

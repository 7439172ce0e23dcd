"""Summarise the GPU check's DAG slice (benchmarks/gpu/check.sh) as one JSON document on stdout.

For every pre-training variant: median tokens/s and MFU over its log windows (the first window,
which holds start-up, left out), peak GPU memory, the held-out retrieval accuracy; for every
fine-tuning / retrieval job: its wall time, task score and peak GPU memory where the results file
records them; for every job: Snakemake's benchmark wall time.  Only what the files hold is
reported; a missing value is null, never estimated.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(root: Path) -> dict:
    out: dict = {"root": str(root), "pretrain": {}, "xtreme": {}, "benchmarks": {}}
    for variant_dir in sorted((root / "pretrain").glob("*")):
        metrics_path, summary_path = variant_dir / "metrics.jsonl", variant_dir / "summary.json"
        records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] \
            if metrics_path.exists() else []
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        out["pretrain"][variant_dir.name] = {
            "steps": summary.get("steps"),
            "median_tokens_per_s": _median([r.get("tokens_per_s") for r in records[1:]]),
            "median_mfu": _median([r.get("mfu") for r in records[1:]]),
            "peak_gpu_memory_bytes": summary.get("peak_gpu_memory_bytes"),
            "heldout_retrieval": (summary.get("retrieval") or {}).get("accuracy"),
            "final_losses": summary.get("final_losses"),
        }
    for results in sorted((root / "xtreme").glob("*/*/seed*/results.json")):
        doc = json.loads(results.read_text())
        out["xtreme"][str(results.relative_to(root / "xtreme").parent)] = {
            key: doc.get(key) for key in ("task_score", "wall_seconds", "peak_gpu_memory_bytes", "device")}
    for tsv in sorted((root / "benchmarks").rglob("*.tsv")):
        with tsv.open() as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if rows:
            out["benchmarks"][str(tsv.relative_to(root / "benchmarks"))] = {
                "seconds": float(rows[0]["s"]), "max_rss_mb": rows[0].get("max_rss")}
    return out


if __name__ == "__main__":
    print(json.dumps(summarise(Path(sys.argv[1])), indent=1))

"""Adding a task is one YAML file: a tenth task (PAWS-X copied under a new name), from a task
directory outside the package (``$VECO2_TASK_DIRS``) and nothing else, is planned by the workflow,
aggregated into the XTREME score and shown in the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_workflow import REPO, snakemake

TREE = REPO / "tests" / "data" / "results_tree"


@pytest.fixture()
def tenth_task(tmp_path, monkeypatch):
    task = yaml.safe_load((REPO / "veco2" / "xtreme" / "tasks" / "pawsx.yaml").read_text())
    task.update(name="pawsx2", label="PAWS-X 2", order=10, description="PAWS-X under another name (test)")
    directory = tmp_path / "tasks"
    directory.mkdir()
    (directory / "pawsx2.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    monkeypatch.setenv("VECO2_TASK_DIRS", str(directory))
    return directory


def test_a_tenth_task_is_fine_tuned_in_the_dry_run(tenth_task, tmp_path):
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["tasks"] = [*config["tasks"], "pawsx2"]
    config["finetune"]["task_overrides"] = {"pawsx2": {"learning_rate": 1.0e-4}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "-p", "--directory", str(tmp_path / "run"), "--configfile", str(path))
    planned = [line for line in proc.stdout.splitlines() if " finetune --task pawsx2 " in line]
    assert len(planned) == 4  # one per variant, seed 1
    assert all(" learning_rate=0.0001 " in line for line in planned)


def test_a_tenth_task_is_aggregated_and_reported(tenth_task, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(TREE, root)
    for variant_dir in (root / "xtreme").iterdir():
        shutil.copytree(variant_dir / "pawsx", variant_dir / "pawsx2")
        for path in (variant_dir / "pawsx2").glob("seed*/results.json"):
            doc = json.loads(path.read_text())
            doc["task"] = "pawsx2"
            path.write_text(json.dumps(doc))
    env = {**os.environ, "VECO2_TASK_DIRS": str(tenth_task)}
    done = subprocess.run([sys.executable, "-m", "veco2.cli", "report", str(root), "--out", str(tmp_path / "report")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    main = pd.read_csv(tmp_path / "report" / "tables" / "main.csv").set_index("model")
    # The tree's mlm scores its nine tasks 70 80 75 60 61 51 47 40 38 (sum 522); the tenth task is a
    # copy of PAWS-X (80): the XTREME score is now the mean of ten task scores.
    assert main.loc["mlm", "PAWS-X 2"] == pytest.approx(80.0)
    assert main.loc["mlm", "Avg"] == pytest.approx((522 + 80) / 10)
    assert main.loc["mlm", "Classification"] == pytest.approx((70 + 80 + 80) / 3)
    assert "PAWS-X 2" in (tmp_path / "report" / "tables" / "ablation.md").read_text()
    assert (tmp_path / "report" / "tables" / "per_language_pawsx2.csv").exists()

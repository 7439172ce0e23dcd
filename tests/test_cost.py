"""The cost table's measure: CPU time per token of the training process, on the threads the job
was given, so that two pre-training jobs sharing the machine cost what they cost alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_training_overrides

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("mlm", "mlm_seq_tok")


def _overrides(corpus: Path, prepared: Path) -> list[str]:
    # a little larger than the other tests' model, so that a step's CPU time is well above timer noise
    return tiny_training_overrides(corpus, **{
        "model.hidden_size": 96, "model.intermediate_size": 192, "training.batch_size": 24, "training.max_steps": 30,
        "training.log_every": 3, "training.checkpoint_every": 1000, "evaluation.heldout_pairs": 20,
        "data.tokenizer": str(prepared / "tokenizer"), "data.shard_dir": str(prepared / "shards")})


def _pretrain(variant: str, out: Path, overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "veco2.cli", "--threads", "1", "pretrain",
                             "--config", str(REPO / "ablations" / f"{variant}.yaml"), "--out", str(out), *overrides],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _cpu_per_token(out: Path) -> float:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["torch_threads"] == 1
    return summary["median_cpu_seconds_per_token"]


@pytest.mark.slow
def test_two_jobs_at_once_keep_the_cost_ratio_they_have_alone(small_corpus_dir, tmp_path):
    from veco2 import cli

    prepared = tmp_path / "prepared"
    overrides = _overrides(small_corpus_dir, prepared)
    assert cli.main(["data", "prepare", "--config", str(REPO / "ablations" / "mlm.yaml"), "--out", str(prepared),
                     *[o for o in overrides if not o.startswith(("data.tokenizer=", "data.shard_dir="))]]) == 0

    alone = {}
    for variant in VARIANTS:  # one after the other: nothing else runs
        job = _pretrain(variant, tmp_path / "alone" / variant, overrides)
        assert job.wait() == 0, job.stderr.read()
        alone[variant] = _cpu_per_token(tmp_path / "alone" / variant)
    jobs = {variant: _pretrain(variant, tmp_path / "together" / variant, overrides) for variant in VARIANTS}
    for variant, job in jobs.items():  # both at once, sharing the machine
        assert job.wait() == 0, job.stderr.read()
    together = {variant: _cpu_per_token(tmp_path / "together" / variant) for variant in VARIANTS}

    ratio_alone = alone["mlm_seq_tok"] / alone["mlm"]
    ratio_together = together["mlm_seq_tok"] / together["mlm"]
    assert 1 / 1.3 <= ratio_together / ratio_alone <= 1.3, (alone, together)

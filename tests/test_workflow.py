"""The Snakemake workflow (Snakefile, workflow/rules/*.smk, config/*.yaml, profiles/*).

- dry runs of every scale config under every profile plan the expected number of jobs per rule;
- the config schema rejects a misspelt key and names it; a bad pre-training override fails at parse time;
- ``snakemake --lint`` is clean;
- ``veco2.devices`` pins concurrent GPU jobs to distinct devices;
- (slow) the real workflow runs end to end on a reduced demo config and its tables hold the
  results.json scores; editing one ablation file then re-plans only that variant's jobs + the report.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
VARIANTS = sorted(p.stem for p in (REPO / "ablations").glob("*.yaml"))
HAS_SLURM_PLUGIN = importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None


def snakemake(*args: str, cwd: Path = REPO, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: {rule: count}."""
    block = output.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match[1]] = int(match[2])
    return counts


def expected_counts(n_variants: int, n_seeds: int, prefetch: bool, n_baselines: int = 0) -> dict[str, int]:
    finetune_tasks, retrieval_tasks = 7, 2  # xnli pawsx udpos panx xquad mlqa tydiqa | bucc2018 tatoeba
    models = n_variants + n_baselines  # baselines are fine-tuned and scored, never pre-trained
    counts = {"prepare_data": 1, "pretrain": n_variants, "finetune": models * finetune_tasks * n_seeds,
              "evaluate_retrieval": models * retrieval_tasks, "trivial_baseline": finetune_tasks + retrieval_tasks,
              "report": 1, "all": 1}
    if prefetch:
        counts["prefetch_xtreme"] = 1
    counts["total"] = sum(counts.values())
    return counts


SCALES = {"demo": (1, False, 0), "small": (3, True, 0), "base": (3, True, 1), "large": (3, True, 1)}


@pytest.mark.parametrize("profile", ["default", "ci", "slurm"])
@pytest.mark.parametrize("scale", list(SCALES))
def test_dry_run_plans_the_full_dag(scale, profile, tmp_path):
    args = ["-n", "--directory", str(tmp_path), "--configfile", str(REPO / "config" / f"{scale}.yaml"),
            "--workflow-profile", str(REPO / "profiles" / profile)]
    if profile == "slurm" and not HAS_SLURM_PLUGIN:
        args += ["--executor", "local"]  # plan with the profile's resources, without the plugin
    proc = snakemake(*args)
    seeds, prefetch, baselines = SCALES[scale]
    assert job_counts(proc.stdout) == expected_counts(len(VARIANTS), seeds, prefetch, baselines)
    if profile == "slurm" and scale == "base":
        # GPU rules ask Slurm for GPUs through gres (not `gpu` as well: the plugin refuses both).
        pretrain_block = proc.stdout.split("rule pretrain:", 1)[1].split("\n\n", 1)[0]
        assert "gres=gpu:4" in pretrain_block and "slurm_partition=gpu" in pretrain_block


def test_adding_an_ablation_file_adds_a_variant(tmp_path):
    ablations = tmp_path / "ablations"
    shutil.copytree(REPO / "ablations", ablations)
    (ablations / "mlm_seq_hot.yaml").write_text("name: mlm_seq_hot\nobjectives:\n  seq: {weight: 1.0, temperature: 0.2}\n")
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["variants"]["dir"] = str(ablations)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"))
    assert job_counts(proc.stdout) == expected_counts(len(VARIANTS) + 1, 1, False)
    assert "results/demo/pretrain/mlm_seq_hot/DONE" in proc.stdout


def test_sweep_target_plans_workers_sharing_one_study(tmp_path):
    proc = snakemake("-n", "-p", "sweep_all", "--directory", str(tmp_path),
                     "--configfile", str(REPO / "config" / "demo.yaml"))
    assert job_counts(proc.stdout) == {"sweep_worker": 2, "sweep_best": 1, "sweep_all": 1, "total": 4}
    workers = re.findall(r"veco2 --threads \d+ sweep --storage (\S+) .*--trials (\d+) --worker (w\d)", proc.stdout)
    assert sorted(workers) == [("results/demo/sweeps/demo/optuna-journal.log", "3", "w0"),
                               ("results/demo/sweeps/demo/optuna-journal.log", "3", "w1")]  # 6 trials / 2
    assert re.search(r"veco2 --threads \d+ sweep --storage \S+ --config \S*config/sweep/demo.yaml --study demo "
                     r"--out results/demo/sweeps/demo --report-only", proc.stdout)


def _write_config(tmp_path: Path, **changes) -> Path:
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_schema_rejects_a_misspelt_key_and_names_it(tmp_path):
    path = _write_config(tmp_path, seads={"qa": [1]})
    proc = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(path), check=False)
    assert proc.returncode != 0
    assert "'seads' was unexpected" in proc.stdout + proc.stderr

    path = _write_config(tmp_path, finetune__max_step=5)
    proc = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(path), check=False)
    assert proc.returncode != 0 and "'max_step' was unexpected" in proc.stdout + proc.stderr


def test_bad_pretrain_override_fails_at_parse_time(tmp_path):
    path = _write_config(tmp_path, pretrain={"config": "config/pretrain/demo.yaml",
                                             "overrides": {"training.max_stpes": 5}})
    proc = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(path), check=False)
    assert proc.returncode != 0 and "max_stpes" in proc.stdout + proc.stderr


def test_lint_is_clean():
    proc = snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# GPU pinning


def test_devices_pins_concurrent_jobs_to_distinct_gpus(tmp_path, monkeypatch):
    from veco2 import devices

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert devices.device_pool() == ["3", "5"]
    first, handles1 = devices.acquire(["3", "5"], 1, poll=0.01, directory=tmp_path)
    second, handles2 = devices.acquire(["3", "5"], 1, poll=0.01, directory=tmp_path)
    assert first == ["3"] and second == ["5"]
    for handle in handles1:
        handle.close()  # job on GPU 3 ends: the next job gets GPU 3 again
    third, handles3 = devices.acquire(["3", "5"], 1, poll=0.01, directory=tmp_path)
    assert third == ["3"]
    for handle in handles2 + handles3:
        handle.close()


def test_devices_runs_the_command_on_its_device_and_keeps_the_lock(tmp_path):
    from veco2 import devices

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "2,4", "VECO2_GPU_LOCK_DIR": str(tmp_path)}
    job = subprocess.Popen([sys.executable, "-m", "veco2.devices", "--", sys.executable, "-c",
                            "import os, sys; print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); "
                            "sys.stdin.readline(); raise SystemExit(7)"],
                           env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "2"
    # While the command runs (the wrapper has exec'd into it), GPU 2 stays locked: the next job gets 4.
    taken, handles = devices.acquire(["2", "4"], 1, poll=0.01, directory=tmp_path)
    assert taken == ["4"]
    for handle in handles:
        handle.close()
    job.stdin.write("\n")
    job.stdin.close()
    assert job.wait(timeout=60) == 7  # the command's exit status
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU: run unchanged
    out = subprocess.run([sys.executable, "-m", "veco2.devices", "--", sys.executable, "-c", "print('cpu')"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "cpu"


# ---------------------------------------------------------------------------------------------
# End to end on a reduced demo config (slow)

E2E_VARIANTS = ["mlm", "mlm_seq"]
E2E_LANGUAGES = {"pawsx": ["de", "en"], "udpos": ["en", "es"], "xquad": ["de", "en"], "tatoeba": ["de", "fr"]}
E2E_SEEDS = {"pawsx": 1, "udpos": 1, "xquad": 1, "tatoeba": 0}


def _has_report_command() -> bool:
    proc = subprocess.run([sys.executable, "-m", "veco2.cli", "--help"], capture_output=True, text=True)
    return re.search(r"\{[^}]*\breport\b", proc.stdout) is not None


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory, small_corpus_dir):
    """Run the real workflow once: 2 variants, one task per family (pawsx, udpos, xquad: 1 seed; tatoeba),
    two test languages each, a 2-layer model pre-trained for 12 steps, fine-tuned for 4."""
    from conftest import tiny_training_overrides

    work = tmp_path_factory.mktemp("workflow")
    ablations = work / "ablations"
    ablations.mkdir()
    for variant in E2E_VARIANTS:
        shutil.copy(REPO / "ablations" / f"{variant}.yaml", ablations)
    overrides = dict(item.split("=", 1) for item in tiny_training_overrides(small_corpus_dir))
    overrides = {key: yaml.safe_load(value) for key, value in overrides.items()}
    report = _has_report_command()
    config = {
        "scale": "e2e",
        "pretrain": {"config": "config/pretrain/demo.yaml", "overrides": overrides},
        "variants": {"dir": str(ablations)},
        "tasks": list(E2E_LANGUAGES),
        "seeds": {"classification": [1], "tagging": [1], "qa": [1]},
        "languages": E2E_LANGUAGES,
        "xtreme": {"source": "demo"},
        "finetune": {"max_steps": 4, "overrides": {"max_train_examples": 64, "batch_size": 16, "max_seq_length": 64},
                     "task_overrides": {"xquad": {"max_seq_length": 128}}},  # room for a 64-token question
        "retrieval": {"layer": "all"},
        "report": {"enabled": report},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake("--directory", str(work), "--configfile", str(work / "config.yaml"),
                     "--workflow-profile", str(REPO / "profiles" / "ci"), timeout=900)
    return work, proc, report


@pytest.mark.slow
def test_end_to_end_tables(e2e_run):
    work, proc, report = e2e_run
    results = work / "results" / "e2e"
    scores = {}
    for variant in E2E_VARIANTS:
        assert (results / "pretrain" / variant / "DONE").exists()
        assert (results / "benchmarks" / "pretrain" / f"{variant}.tsv").exists()
        assert (work / "logs" / "e2e" / "pretrain" / f"{variant}.log").exists()
        for task, seed in E2E_SEEDS.items():
            record = json.loads((results / "xtreme" / variant / task / f"seed{seed}" / "results.json").read_text())
            assert record["task"] == task and record["seed"] == seed
            assert sorted(record["scores"]) == sorted(E2E_LANGUAGES[task])
            assert 0.0 <= record["task_score"] <= 100.0
            scores[variant, task] = record["task_score"]
        by_layer = json.loads((results / "xtreme" / variant / "tatoeba" / "seed0" / "results.json").read_text())
        assert sorted(map(int, by_layer["task_score_by_layer"])) == [0, 1, 2]  # 2-layer model: layers 0..2
    # The checkpoints live outside the declared outputs (resume), one directory per config hash.
    assert len(list((work / "resources" / "e2e" / "checkpoints" / "mlm").glob("*/step-*"))) >= 1
    if not report:
        pytest.skip("`veco2 report` is not available yet: the report tables were not built")
    import pandas as pd

    main = pd.read_csv(results / "report" / "tables" / "main.csv")
    ours = main[main["source"] == "this suite"].set_index("model")
    assert sorted(ours.index) == sorted(E2E_VARIANTS)
    for (variant, task), value in scores.items():  # one seed: the table holds the run's own score
        if task == "xquad":  # QA task score = (F1 + EM) / 2
            assert (ours.loc[variant, "XQuAD F1"] + ours.loc[variant, "XQuAD EM"]) / 2 == pytest.approx(value, abs=1e-6)
        else:
            label = {"pawsx": "PAWS-X", "udpos": "POS", "tatoeba": "Tatoeba"}[task]
            assert ours.loc[variant, label] == pytest.approx(value, abs=1e-6)
    from veco2.report.tables import REFERENCE_ROWS

    # + the trivial baseline row (majority label, most frequent tag, ...) and the published reference rows
    assert main.shape[0] == len(E2E_VARIANTS) + 1 + len(REFERENCE_ROWS)
    assert main.loc[main["model"] == "trivial", "source"].tolist() == ["this suite: trivial baseline (no model)"]
    assert (results / "report" / "report.html").stat().st_size > 0
    assert any((results / "report" / "figures").glob("*.png"))


@pytest.mark.slow
def test_editing_one_ablation_reruns_only_its_jobs(e2e_run):
    work, _, report = e2e_run
    args = ["-n", "--directory", str(work), "--configfile", str(work / "config.yaml"),
            "--workflow-profile", str(REPO / "profiles" / "ci")]
    assert "Nothing to be done" in snakemake(*args).stdout  # a finished run is up to date
    ablation = work / "ablations" / "mlm_seq.yaml"
    ablation.write_text(ablation.read_text().replace("weight: 1.0", "weight: 0.5"))
    proc = snakemake(*args)
    counts = job_counts(proc.stdout)
    assert counts == {"pretrain": 1, "finetune": 3, "evaluate_retrieval": 1, **({"report": 1} if report else {}),
                      "all": 1, "total": 6 + (1 if report else 0)}
    outputs = re.findall(r"^rule (\w+):\n(?:.*\n)*?\s+output: (.*)$", proc.stdout, flags=re.M)
    planned = [out for rule, out in outputs if rule in ("pretrain", "finetune", "evaluate_retrieval")]
    assert len(planned) == 5 and all("/mlm_seq/" in out for out in planned)


@pytest.mark.slow
def test_snakemake_report_holds_tables_figures_and_captions(e2e_run, tmp_path):
    import zipfile

    work, _, report = e2e_run
    if not report:
        pytest.skip("`veco2 report` is not available yet")
    snakemake("--directory", str(work), "--configfile", str(work / "config.yaml"),
              "--workflow-profile", str(REPO / "profiles" / "ci"), "--report", str(tmp_path / "report.zip"))
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        names = {Path(name).name for name in archive.namelist()}
        html = archive.read(next(n for n in archive.namelist() if n.endswith("report/report.html"))).decode()
    assert {"main.csv", "ablation.csv", "report.html", "loss_curves.png", "retrieval_by_layer.png"} <= names
    assert "XTREME zero-shot cross-lingual transfer: one row per pre-training variant" in html  # tables.rst
    assert "against the encoder layer" in html  # figures.rst, retrieval_by_layer

"""Fault injection: kill -9 at chosen points, full disks, concurrent runs, and the security rules.

The kills are real SIGKILLs of ``veco2`` subprocesses: either sent from here (polling the output
directory), or sent by the process to itself at an exact point through ``VECO2_FAULT``
(:func:`veco2.fileio.fault_point`: half-way through a checkpoint, between two steps, inside an
atomic write), which polling cannot hit reliably on a run this small.  After each kill the output
directory is checked for half-written files, the run is started again with the same command, and
the final result is compared with an uninterrupted run: bit for bit for pre-training weights,
exactly for fine-tuning scores.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_training_overrides
from safetensors.torch import load_file

from veco2.errors import Veco2Error
from veco2.fileio import atomic_write, read_json, read_jsonl, write_json, write_text

ROOT = Path(__file__).resolve().parent.parent
KILLED = -signal.SIGKILL


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("VECO2_FAULT", None)
    env.update(extra)
    return env


def _veco2(args: list[str], fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m veco2.cli ARGS``; with ``fault`` the process SIGKILLs itself at that point."""
    env = _env(**({"VECO2_FAULT": fault} if fault else {}))
    return subprocess.run([sys.executable, "-m", "veco2.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _kill_when(args: list[str], ready, timeout: float = 120) -> int:
    """Start ``veco2 ARGS``, send it SIGKILL as soon as ``ready()`` is true; return its exit status."""
    process = subprocess.Popen([sys.executable, "-m", "veco2.cli", *args], cwd=ROOT, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the run ended (status {process.returncode}) before the kill point")
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        return process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ----------------------------------------------------------------------------------------------
# Pre-training: kill -9 at seven points, resume, final weights bit-identical


def _assert_no_half_written_pretraining_files(out: Path) -> None:
    """Every file a reader would pick up is complete: published checkpoints load, metrics parse."""
    for checkpoint in sorted((out / "checkpoints").glob("step-*")):
        if checkpoint.name.endswith(".tmp"):
            continue  # an unpublished checkpoint, ignored by resume and replaced by the next save
        assert {p.name for p in checkpoint.iterdir()} == {"model.safetensors", "optimizer.pt", "trainer_state.json"}
        load_file(checkpoint / "model.safetensors")
        torch.load(checkpoint / "optimizer.pt", weights_only=True)
        assert read_json(checkpoint / "trainer_state.json")["step"] == int(checkpoint.name.split("-")[1])
    if (out / "metrics.jsonl").exists():
        read_jsonl(out / "metrics.jsonl")
    if (out / "summary.json").exists():
        read_json(out / "summary.json")
    assert not (out / "DONE").exists()


@pytest.fixture(scope="module")
def shared_data(small_corpus_dir, tmp_path_factory):
    """Tokenizer and shards prepared once (the Unigram trainer is not bit-reproducible across runs)."""
    from veco2.config import load_config
    from veco2.trainer import prepare_data

    out = tmp_path_factory.mktemp("shared")
    prepare_data(load_config(ROOT / "ablations" / "mlm_seq_tok.yaml",
                             overrides=tiny_training_overrides(small_corpus_dir)), out)
    return out


@pytest.mark.slow
def test_pretraining_killed_at_seven_points_resumes_bit_identical(small_corpus_dir, shared_data, tmp_path):
    overrides = tiny_training_overrides(small_corpus_dir, **{
        "data.tokenizer": shared_data / "tokenizer", "data.shard_dir": shared_data / "shards",
        "evaluation.heldout_pairs": 20})
    args = ["pretrain", "--config", "ablations/mlm_seq_tok.yaml", *overrides]
    straight = _veco2([*args, "--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "killed"
    command = [*args, "--out", str(out)]
    # 1. kill -9 from outside right after start (config written, training not begun)
    assert _kill_when(command, lambda: (out / "config.yaml").exists()) == KILLED
    # 2..7: the process kills itself at exact points (max_steps 12, checkpoints at 4 and 8)
    faults = [
        ("pretrain-step:3", lambda: not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())),
        ("pretrain-step:4", lambda: (out / "checkpoints" / "step-000000004").is_dir()),
        ("checkpoint:8", lambda: (out / "checkpoints" / "step-000000008.tmp").is_dir()
                                 and not (out / "checkpoints" / "step-000000008").exists()),
        ("pretrain-step:10", lambda: (out / "checkpoints" / "step-000000008").is_dir()),
        ("pretrain-finish", lambda: (out / "model" / "model.safetensors").exists()),
        ("write:summary.json", lambda: not (out / "summary.json").exists()),
    ]
    for fault, expected_state in faults:
        result = _veco2(command, fault=fault)
        assert result.returncode == KILLED, (fault, result.returncode, result.stderr[-2000:])
        assert expected_state(), fault
        _assert_no_half_written_pretraining_files(out)
    final = _veco2(command)
    assert final.returncode == 0, final.stderr[-2000:]
    assert (out / "DONE").exists()

    reference = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    resumed = load_file(out / "model" / "model.safetensors")
    assert reference.keys() == resumed.keys()
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name
    # the log holds every step once, with the same losses as the uninterrupted run
    losses = [[(r["step"], r["loss"]) for r in read_jsonl(d / "metrics.jsonl")] for d in (tmp_path / "straight", out)]
    assert losses[0] == losses[1] and [s for s, _ in losses[1]] == [2, 4, 6, 8, 10, 12]
    assert read_json(out / "summary.json")["steps"] == 12


def test_two_runs_on_one_output_directory_second_refuses(small_corpus_dir, shared_data, tmp_path):
    """A real second process (not a second lock in the same process): one-line refusal, exit 2."""
    from veco2.trainer import exclusive_directory

    with exclusive_directory(tmp_path):  # the first run holds the directory
        result = _veco2(["pretrain", "--out", str(tmp_path), *tiny_training_overrides(small_corpus_dir)])
    assert result.returncode == 2
    assert result.stderr.strip() == (f"veco2: error: {tmp_path}: another veco2 run is using this output "
                                      f"directory (lock {tmp_path / '.lock'})")
    assert not (tmp_path / "config.yaml").exists()  # it wrote nothing


# ----------------------------------------------------------------------------------------------
# Fine-tuning: kill -9, re-run, same scores


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from test_xtreme_data import write_tiny_layout

    return write_tiny_layout(tmp_path_factory.mktemp("xtreme"), n_copies=2)


@pytest.mark.slow
def test_finetuning_killed_at_five_points_gives_the_same_scores(tiny_pretrained_dir, tiny_root, tmp_path):
    args = ["finetune", "--task", "xnli", "--model", str(tiny_pretrained_dir), "--seeds", "1",
            "--data-root", str(tiny_root), "--languages", "en", "de", "--max-steps", "4",
            "batch_size=4", "eval_steps=2"]
    straight = _veco2([*args, "--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-2000:]
    seed_dir = tmp_path / "killed" / "xnli" / "seed1"
    command = [*args, "--out", str(tmp_path / "killed")]
    faults = [
        ("finetune-step:1", lambda: not (seed_dir / "checkpoint.pt").exists()),
        ("write:checkpoint.pt", lambda: not (seed_dir / "checkpoint.pt").exists()),  # first checkpoint, half-written
        ("finetune-step:2", lambda: torch.load(seed_dir / "checkpoint.pt", weights_only=True)["state"]["step"] == 2),
        ("write:checkpoint.pt", lambda: torch.load(seed_dir / "checkpoint.pt", weights_only=True)["state"]["step"] == 2),
        ("write:results.json", lambda: not (seed_dir / "results.json").exists()),
    ]
    for fault, expected_state in faults:
        result = _veco2(command, fault=fault)
        assert result.returncode == KILLED, (fault, result.returncode, result.stderr[-2000:])
        assert expected_state(), fault
    final = _veco2(command)
    assert final.returncode == 0, final.stderr[-2000:]
    reference = read_json(tmp_path / "straight" / "xnli" / "seed1" / "results.json")
    resumed = read_json(seed_dir / "results.json")
    assert resumed["scores"] == reference["scores"] and resumed["task_score"] == reference["task_score"]
    assert resumed["selection"]["history"] == reference["selection"]["history"]
    for lang in ("en", "de"):
        name = Path("predictions") / "xnli" / f"test-{lang}.tsv"
        assert (seed_dir / name).read_text() == (tmp_path / "straight" / "xnli" / "seed1" / name).read_text()
    assert not (seed_dir / "checkpoint.pt").exists()
    # a re-run with the same settings is a no-op that reports the same scores
    again = _veco2(command)
    assert again.returncode == 0 and json.loads(again.stdout.splitlines()[-1])["task_score"] == round(
        reference["task_score"], 2)


def test_finetuning_checkpoint_loads_with_weights_only(tiny_pretrained_dir, tiny_root, tmp_path, monkeypatch):
    from veco2.xtreme import finetune

    calls = {"n": 0}
    real = finetune._dev_score

    def second_eval_dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune, "_dev_score", second_eval_dies)
    with pytest.raises(KeyboardInterrupt):
        finetune.run_finetune("xnli", tiny_pretrained_dir, tmp_path, seeds=[1], data_root=tiny_root,
                              overrides={"max_steps": 4, "batch_size": 4, "eval_steps": 2}, languages=["en"])
    saved = torch.load(tmp_path / "xnli" / "seed1" / "checkpoint.pt", weights_only=True)
    assert saved["state"]["step"] == 2 and saved["numpy_rng"][0] == "MT19937"


# ----------------------------------------------------------------------------------------------
# Snakemake killed mid-DAG


def _snakemake(work: Path, *extra: str) -> subprocess.Popen:
    """The workflow command of docs/workflow.md (CI profile) in ``work``."""
    env = {**_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.Popen([str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
                             "--directory", str(work), "--configfile", str(work / "config.yaml"),
                             "--workflow-profile", str(ROOT / "profiles" / "ci"), *extra],
                            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _rerun_after_kill(work: Path) -> subprocess.Popen:
    """docs/reliability.md: after a kill -9, ``--unlock`` (the dead run's lock stays behind), then
    the same command; ``rerun-incomplete`` in the profiles re-runs the jobs the kill interrupted."""
    unlock = _snakemake(work, "--unlock")
    output = unlock.communicate(timeout=300)[0]
    assert unlock.returncode == 0, output[-3000:]
    return _snakemake(work)


def _kill_group_when(process: subprocess.Popen, ready, what: str, timeout: float = 600) -> None:
    """SIGKILL snakemake and every job it started (as a cancelled cluster job) once ``ready()``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            output = process.communicate()[0] if process.poll() is not None else ""
            raise AssertionError(f"snakemake ended (status {process.returncode}) before {what}:\n{output[-3000:]}")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


@pytest.mark.slow
def test_snakemake_killed_mid_dag_reruns_to_completion(small_corpus_dir, tmp_path):
    import yaml

    if not (ROOT / "Snakefile").exists():
        pytest.fail("no Snakefile in the project")
    ablations = tmp_path / "ablations"
    ablations.mkdir()
    (ablations / "mlm.yaml").write_text((ROOT / "ablations" / "mlm.yaml").read_text())
    overrides = dict(item.split("=", 1) for item in tiny_training_overrides(small_corpus_dir))
    config = {
        "scale": "kill",
        "pretrain": {"config": "config/pretrain/demo.yaml",
                     "overrides": {key: yaml.safe_load(value) for key, value in overrides.items()}},
        "variants": {"dir": str(ablations)},
        "tasks": ["pawsx"],
        "seeds": {"classification": [1], "tagging": [1], "qa": [1]},
        "languages": {"pawsx": ["de", "en"]},
        "xtreme": {"source": "demo"},
        "finetune": {"max_steps": 4, "overrides": {"max_train_examples": 64, "batch_size": 16, "max_seq_length": 64}},
        "retrieval": {"layer": None},
        "report": {"enabled": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    results, resources = tmp_path / "results" / "kill", tmp_path / "resources" / "kill"

    # 1. killed mid pre-training, after its first checkpoint
    _kill_group_when(_snakemake(tmp_path), lambda: any(resources.glob("checkpoints/mlm/*/step-000000004")),
                     "the first pre-training checkpoint")
    assert not (results / "pretrain" / "mlm" / "DONE").exists()
    # 2. killed again while the XTREME jobs run (pre-training finished)
    _kill_group_when(_rerun_after_kill(tmp_path), lambda: (results / "pretrain" / "mlm" / "DONE").exists()
                     and any((tmp_path / "logs" / "kill").glob("finetune/**/*.log")), "the XTREME jobs")
    # 3. the documented command again: completes
    final = _rerun_after_kill(tmp_path)
    output = final.communicate(timeout=900)[0]
    assert final.returncode == 0, output[-4000:]
    outputs = sorted(p.relative_to(results).as_posix() for p in results.glob("**/results.json"))
    assert outputs == ["xtreme/mlm/pawsx/seed1/results.json", "xtreme/trivial/pawsx/seed0/results.json"]
    for name in outputs:  # complete, parseable, every language scored
        record = read_json(results / name)
        assert sorted(record["scores"]) == sorted(config["languages"][record["task"]])
    assert read_json(results / "pretrain" / "mlm" / "summary.json")["steps"] == 12
    assert [r["step"] for r in read_jsonl(results / "pretrain" / "mlm" / "metrics.jsonl")] == [2, 4, 6, 8, 10, 12]
    # a second run finds nothing to do
    again = _snakemake(tmp_path)
    assert again.wait(timeout=300) == 0 and "Nothing to be done" in again.communicate()[0]


# ----------------------------------------------------------------------------------------------
# Atomic writes: a failure during a write leaves the previous version intact


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_full_disk_during_json_and_text_writes_keeps_the_previous_version(tmp_path, monkeypatch):
    write_json(tmp_path / "results.json", {"score": 1})
    write_text(tmp_path / "table.csv", "a,b\n1,2\n")

    real_dump = json.dump

    def dump_half_then_fail(obj, handle, **kwargs):
        handle.write('{"score": ')  # part of the new content reaches the temporary file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json, "dump", dump_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_json(tmp_path / "results.json", {"score": 2})
    monkeypatch.setattr(json, "dump", real_dump)
    assert read_json(tmp_path / "results.json") == {"score": 1}

    with pytest.raises(OSError):
        with atomic_write(tmp_path / "table.csv") as handle:
            handle.write("a,b\n")
            _full_disk()
    assert (tmp_path / "table.csv").read_text() == "a,b\n1,2\n"
    monkeypatch.setattr(os, "fsync", _full_disk)  # the failure can also come when the data is flushed
    with pytest.raises(OSError):
        write_text(tmp_path / "table.csv", "new\n")
    assert (tmp_path / "table.csv").read_text() == "a,b\n1,2\n"
    assert _leftovers(tmp_path) == []


def test_full_disk_during_a_checkpoint_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from transformers import get_linear_schedule_with_warmup

    from veco2.checkpoint import checkpoints, load_checkpoint, save_checkpoint

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = get_linear_schedule_with_warmup(optimizer, 1, 10)
    save_checkpoint(tmp_path, 4, model, optimizer, scheduler, {"step": 4}, keep=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", _full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, 8, model, optimizer, scheduler, {"step": 8}, keep=2)
    monkeypatch.undo()
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000000004"]  # step 8 was never published
    fresh = torch.nn.Linear(4, 3)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters())
    state = load_checkpoint(checkpoints(tmp_path)[-1], fresh, fresh_optimizer,
                            get_linear_schedule_with_warmup(fresh_optimizer, 1, 10))
    assert state["step"] == 4 and all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_full_disk_through_the_cli_is_one_line_and_keeps_outputs(small_corpus_dir, tmp_path, monkeypatch, capsys):
    from veco2 import cli

    out = tmp_path / "prepared"
    write_json(out / "shards" / "manifest.json", {"previous": True})  # a previous version that must survive
    monkeypatch.setattr(os, "fsync", _full_disk)
    status = cli.main(["data", "prepare", "--out", str(out), *tiny_training_overrides(small_corpus_dir),
                       f"data.shard_dir={tmp_path / 'new-shards'}"])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(error) == 1
    assert error[0].startswith("veco2: error: ") and "No space left on device" in error[0]
    assert read_json(out / "shards" / "manifest.json") == {"previous": True}
    assert not (out / "tokenizer" / "tokenizer.json").exists()  # no tokenizer that looks complete


def test_a_killed_writer_leaves_a_metrics_log_that_resume_repairs(tmp_path):
    from veco2.trainer import _rewind_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss": 1.5}\n{"step": 4, "loss": 1.2}\n{"step": 6, "lo')  # killed mid-append
    _rewind_metrics(path, 4)  # resumed from the step-4 checkpoint
    assert path.read_text() == '{"step": 2, "loss": 1.5}\n{"step": 4, "loss": 1.2}\n'
    _rewind_metrics(path, 0)  # died before the first checkpoint: starts over
    assert path.read_text() == ""


# ----------------------------------------------------------------------------------------------
# Security rules, checked over the source


def _sources(*patterns: str) -> list[Path]:
    files = []
    for pattern in patterns:
        files += [p for p in ROOT.glob(pattern) if ".venv" not in p.parts]
    return sorted(set(files))


def _code_lines(path: Path):
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        yield number, line


def test_checkpoints_load_without_pickle_code_execution():
    offenders = []
    for path in _sources("veco2/**/*.py", "workflow/**/*.py", "benchmarks/**/*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start():text.find(")", match.start()) + 1]
            if "weights_only=True" not in call:
                offenders.append(f"{path.relative_to(ROOT)}: {call}")
        for number, line in _code_lines(path):
            if re.search(r"pickle\.loads?\(|allow_pickle=True|dill\.load", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_yaml_is_read_with_safe_load_only():
    offenders = []
    for path in _sources("veco2/**/*.py", "workflow/**/*.py", "workflow/**/*.smk", "Snakefile", "tests/*.py",
                         "benchmarks/**/*.py"):
        for number, line in _code_lines(path):
            if re.search(r"yaml\.(load|load_all|unsafe_load|full_load)\(|Loader=yaml\.(Loader|FullLoader|UnsafeLoader)",
                         line) and "SafeLoader" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_no_config_value_reaches_a_shell_unquoted():
    """Python never builds a shell command line; Snakemake shell commands quote every value (``:q``)."""
    offenders = []
    for path in _sources("veco2/**/*.py", "workflow/**/*.py", "benchmarks/**/*.py"):
        for number, line in _code_lines(path):
            if re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput\(", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    rules = _sources("Snakefile", "workflow/Snakefile", "workflow/**/*.smk")
    for path in rules:
        text = path.read_text(encoding="utf-8")
        for block in re.finditer(r"^\s*shell:\s*\n?(.*?)(?=^\s*(?:rule |checkpoint |[a-z_]+:\s*$|$))", text,
                                 flags=re.S | re.M):
            for field in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", block.group(1)):
                name = field.strip()
                if name.split(".")[0].split("[")[0] in ("params", "wildcards", "config", "input", "output", "log",
                                                        "resources") and not name.endswith(":q"):
                    offenders.append(f"{path.relative_to(ROOT)}: {{{name}}} is not quoted (use {{{name}:q}})")
    assert offenders == []


def test_prefetched_files_are_checked_against_the_manifest_hashes(tmp_path):
    from veco2.xtreme.prefetch import verify, write_manifest

    write_text(tmp_path / "xnli" / "test-de.tsv", "a\tb\tentailment\n")
    write_manifest(tmp_path)
    assert verify(tmp_path) == 1
    (tmp_path / "xnli" / "test-de.tsv").write_text("a\tb\tneutral\n")  # a corrupted / tampered download
    with pytest.raises(Veco2Error, match=r"test-de\.tsv: sha256 .* does not match the manifest .*veco2 prefetch"):
        verify(tmp_path)

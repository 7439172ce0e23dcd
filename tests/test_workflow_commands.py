"""What each scale's real command executes: the shell commands that `snakemake -n -p` plans.

A scale is exactly its config file: no value of another scale (the demo's 60 pre-training steps,
its 320-example fine-tuning cap) may leak into small, base or large.  These tests parse every
planned `veco2 pretrain`, `veco2 finetune` and `veco2 evaluate` command line, resolve the config and
hyper-parameters that the job would run with through the same functions the commands use, and
compare them with the pre-training config and task files.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from test_workflow import REPO, snakemake
from veco2.config import load_config
from veco2.xtreme.finetune import parse_overrides, resolve_hyperparameters
from veco2.xtreme.registry import get_task

SCALES = ("demo", "small", "base", "large")
VARIANTS = sorted(p.stem for p in (REPO / "ablations").glob("*.yaml"))


def planned_commands(tmp_path: Path, *args: str) -> list[list[str]]:
    """The argument vectors of every `veco2 ...` job of a dry run (after the device/launch prefix,
    without the log redirection)."""
    return shell_commands(snakemake("-n", "-p", "--directory", str(tmp_path), *args))


def shell_commands(proc) -> list[list[str]]:
    commands = []
    for line in proc.stdout.splitlines():
        if not line.startswith("Shell command: "):
            continue
        argv = shlex.split(line.removeprefix("Shell command: ").split(" > ", 1)[0])
        if "veco2" in argv or "veco2.cli" in argv:  # not the `all` target's "None"
            commands.append(argv)
    assert commands, proc.stdout[-2000:]
    return commands


def veco2_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launcher prefix, `veco2` arguments from the sub-command on) of one job's command; the global
    ``--threads N`` before the sub-command is left out (:func:`job_threads` reads it)."""
    if "veco2" in argv:
        at = argv.index("veco2")
        prefix, args = argv[:at], argv[at + 1:]
    else:
        at = argv.index("veco2.cli")  # accelerate launch ... -m veco2.cli
        prefix, args = argv[:at + 1], argv[at + 1:]
    return prefix, args[2:] if args[:1] == ["--threads"] else args


def job_threads(argv: list[str]) -> int | None:
    """The ``--threads N`` a job's `veco2` command line gives it (None: none)."""
    at = argv.index("veco2") if "veco2" in argv else argv.index("veco2.cli")
    return int(argv[at + 2]) if argv[at + 1:at + 2] == ["--threads"] else None


def key_value_overrides(args: list[str]) -> list[str]:
    """The KEY=VALUE overrides of a sub-command's arguments (one block, as the CLI takes them)."""
    return [arg for i, arg in enumerate(args) if "=" in arg and not args[i - 1].startswith("--")]


def option_values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def pretrain_jobs(commands):
    jobs = {}
    for argv in commands:
        prefix, args = veco2_argv(argv)
        if args[:1] == ["pretrain"]:
            configs = option_values(args, "--config")
            rest = [a for i, a in enumerate(args[1:], 1) if a not in ("--config", "--out")
                    and args[i - 1] not in ("--config", "--out")]
            jobs[Path(configs[-1]).stem] = (prefix, configs, rest)
    return jobs


def finetune_jobs(commands, subcommand="finetune"):
    jobs = []
    for argv in commands:
        prefix, args = veco2_argv(argv)
        if args[:1] == [subcommand]:
            jobs.append((prefix, args))
    return jobs


@pytest.fixture(scope="module")
def scale_commands(tmp_path_factory):
    """``scale -> planned commands`` of `snakemake -n -p --configfile config/SCALE.yaml` (default
    profile), one dry run per scale shared by the tests of this module."""
    cache = {}

    def commands(scale: str) -> list[list[str]]:
        if scale not in cache:
            cache[scale] = planned_commands(tmp_path_factory.mktemp(scale), "--configfile",
                                            str(REPO / "config" / f"{scale}.yaml"))
        return cache[scale]

    return commands


def scale_config(scale: str) -> dict:
    return yaml.safe_load((REPO / "config" / f"{scale}.yaml").read_text())


# The values each scale's pre-training config declares (config/pretrain/SCALE.yaml), and the demo's cut.
EXPECTED_PRETRAIN = {
    "demo": {"max_steps": 60, "batch_size": 32, "heldout_pairs": 200, "size": "tiny"},
    "small": {"max_steps": 20000, "batch_size": 128, "size": "small"},
    "base": {"max_steps": 100000, "batch_size": 64, "grad_accum": 8, "size": "base", "init_from": "xlm-roberta-base"},
    "large": {"max_steps": 100000, "batch_size": 32, "grad_accum": 16, "size": "large",
              "init_from": "xlm-roberta-large"},
}


@pytest.mark.parametrize("scale", SCALES)
def test_pretrain_jobs_run_their_scale_pretrain_config_and_nothing_else(scale, scale_commands):
    jobs = pretrain_jobs(scale_commands(scale))
    assert sorted(jobs) == VARIANTS
    pretrain_config = REPO / scale_config(scale)["pretrain"]["config"]
    scale_overrides = scale_config(scale)["pretrain"]["overrides"]
    for variant, (prefix, configs, overrides) in jobs.items():
        assert [Path(c).resolve() for c in configs] == [pretrain_config.resolve(), (REPO / "ablations" / f"{variant}.yaml").resolve()]
        given = dict(item.split("=", 1) for item in overrides)
        # Only where the workflow puts the shared data and the checkpoints, plus the scale's own overrides.
        bookkeeping = {"data.shard_dir", "training.checkpoint_dir", "data.tokenizer"}
        assert set(given) - bookkeeping == set(scale_overrides), (variant, given)
        for key, value in scale_overrides.items():
            assert yaml.safe_load(given[key]) == value
        cfg = load_config(*configs, overrides=overrides)
        expected = EXPECTED_PRETRAIN[scale]
        assert cfg.training.max_steps == expected["max_steps"]
        assert cfg.training.batch_size == expected["batch_size"]
        assert cfg.training.grad_accum == expected.get("grad_accum", 1)
        assert cfg.model.size == expected["size"]
        assert cfg.model.init_from == expected.get("init_from")
        if "heldout_pairs" in expected:
            assert cfg.evaluation.heldout_pairs == expected["heldout_pairs"]
        assert "training.max_steps=60" not in overrides or scale == "demo"
        assert prefix[-1] == "--" and "accelerate" not in prefix  # default profile: one GPU per job


DEMO_BUDGETS = {"classification": (3e-4, 250, 250), "tagging": (5e-4, 150, 150), "qa": (5e-4, 40, 40)}


@pytest.mark.parametrize("scale", SCALES)
def test_finetune_jobs_get_the_official_settings_at_paper_scale(scale, scale_commands):
    jobs = finetune_jobs(scale_commands(scale))
    config = scale_config(scale)
    models = VARIANTS + [m.split("/")[-1] for m in config["baselines"]]
    tasks = [t for t in config["tasks"] if get_task(t).family != "retrieval"]
    seeds = config["seeds"]
    assert len(jobs) == len(models) * sum(len(seeds[get_task(t).family]) for t in tasks)
    seen = set()
    for _prefix, args in jobs:
        task = get_task(option_values(args, "--task")[0])
        overrides = parse_overrides(key_value_overrides(args))
        max_steps = option_values(args, "--max-steps")
        if max_steps:
            overrides["max_steps"] = int(max_steps[0])
        hp = resolve_hyperparameters(task, overrides)
        official = task.hyperparameters
        if scale == "demo":  # per-family budgets that learn English (config/demo.yaml)
            assert not max_steps and hp.max_train_examples is None and hp.batch_size == 16
            assert (hp.learning_rate, hp.max_steps, hp.eval_steps) == DEMO_BUDGETS[task.family]
        else:
            assert not max_steps and hp.max_steps is None and hp.max_train_examples is None
            assert hp.num_train_epochs == official["num_train_epochs"]
            assert hp.batch_size == official["batch_size"] == 32
            assert hp.max_seq_length == official["max_seq_length"]
            lr = 3e-5 if (scale == "large" and task.name == "xnli") else official["learning_rate"]
            assert hp.learning_rate == pytest.approx(lr)
            assert hp.mixed_precision == "bf16"
        model = option_values(args, "--model")[0]
        seen.add(model)
    expected_models = {f"results/{scale}/pretrain/{v}/model" for v in VARIANTS} | set(config["baselines"])
    assert seen == expected_models


@pytest.mark.parametrize("scale", SCALES)
def test_retrieval_jobs_encode_with_the_scale_settings(scale, scale_commands):
    jobs = finetune_jobs(scale_commands(scale), "evaluate")
    assert jobs
    for _prefix, args in jobs:
        if scale == "demo":
            assert option_values(args, "--mixed-precision") == ["no"] and not option_values(args, "--batch-size")
        else:
            assert option_values(args, "--mixed-precision") == ["bf16"] and option_values(args, "--batch-size") == ["256"]
        assert option_values(args, "--layer") == ["all"]


def test_baselines_are_fine_tuned_and_scored_by_name_without_pretraining(scale_commands):
    commands = scale_commands("base")
    assert sorted(pretrain_jobs(commands)) == VARIANTS  # no pre-training job for the baseline
    finetunes = [args for _, args in finetune_jobs(commands) if option_values(args, "--model") == ["xlm-roberta-base"]]
    assert {option_values(a, "--task")[0] for a in finetunes} == {"xnli", "pawsx", "udpos", "panx", "xquad", "mlqa", "tydiqa"}
    assert all(option_values(a, "--out") == ["results/base/xtreme/xlm-roberta-base"] for a in finetunes)
    retrieval = [args for _, args in finetune_jobs(commands, "evaluate")
                 if option_values(args, "--model") == ["xlm-roberta-base"]]
    assert sorted(option_values(a, "--task")[0] for a in retrieval) == ["bucc2018", "tatoeba"]


def test_a_baseline_name_that_clashes_with_a_variant_is_refused(tmp_path):
    config = scale_config("base")
    config["baselines"] = [{"model": "org/some-model", "name": "mlm"}]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(path), check=False)
    assert proc.returncode != 0 and "baselines: the name 'mlm'" in proc.stdout + proc.stderr


def test_several_gpus_launch_accelerate_with_one_process_each(tmp_path):
    commands = planned_commands(tmp_path, "--configfile", str(REPO / "config" / "base.yaml"),
                                "--set-resources", "pretrain:gpu=4", "finetune:gpu=2")
    for prefix, _configs, _overrides in pretrain_jobs(commands).values():
        assert prefix[:5] == ["python", "-m", "veco2.devices", "--count", "4"]
        launch = prefix[prefix.index("--") + 1:]
        assert launch[:2] == ["accelerate", "launch"]
        assert option_values(launch, "--num_processes") == ["4"] and "--multi_gpu" in launch
    for prefix, _ in finetune_jobs(commands):
        assert prefix[:5] == ["python", "-m", "veco2.devices", "--count", "2"]
        assert option_values(prefix, "--num_processes") == ["2"]
    for prefix, _ in finetune_jobs(commands, "evaluate"):  # the profile still gives retrieval one GPU
        assert prefix == ["python", "-m", "veco2.devices", "--count", "1", "--"]


def test_slurm_profile_requests_the_gpus_the_jobs_launch_on(tmp_path):
    from test_workflow import HAS_SLURM_PLUGIN

    args = ["--configfile", str(REPO / "config" / "large.yaml"), "--workflow-profile", str(REPO / "profiles" / "slurm")]
    if not HAS_SLURM_PLUGIN:
        args += ["--executor", "local"]  # plan with the profile's resources, without the plugin
    proc = snakemake("-n", "-p", "--directory", str(tmp_path), *args)
    pretrain_block = proc.stdout.split("rule pretrain:", 1)[1].split("\n\n", 1)[0]
    assert "gres=gpu:4" in pretrain_block
    commands = shell_commands(proc)
    for prefix, _configs, _overrides in pretrain_jobs(commands).values():
        assert option_values(prefix, "--num_processes") == ["4"] and option_values(prefix, "--count") == ["4"]
    for prefix, _ in finetune_jobs(commands):
        assert prefix == ["python", "-m", "veco2.devices", "--count", "1", "--"]


@pytest.mark.parametrize("scale", ["demo", "small"])
def test_each_scale_sweeps_its_own_study(scale, tmp_path):
    config = scale_config(scale)
    (study, spec), = config["sweep"]["studies"].items()
    commands = planned_commands(tmp_path, "sweep_all", "--configfile", str(REPO / "config" / f"{scale}.yaml"))
    workers = [veco2_argv(argv)[1] for argv in commands if "--worker" in argv]
    assert len(workers) == spec["workers"]
    assert sum(int(option_values(w, "--trials")[0]) for w in workers) == spec["trials"]
    for args in workers:
        assert Path(option_values(args, "--config")[0]).resolve() == (REPO / spec["config"]).resolve()
        assert option_values(args, "--out") == [f"results/{scale}/sweeps/{study}"]


def test_finetune_settings_layer_overrides_then_family_then_task(tmp_path):
    """What each job is given: `finetune.overrides`, then its family's, then its task's (later win)."""
    config = scale_config("demo")
    config["tasks"] = ["xnli", "pawsx", "udpos", "tatoeba"]
    config["finetune"] = {"max_steps": None, "overrides": {"learning_rate": 1e-5, "batch_size": 8},
                          "family_overrides": {"classification": {"learning_rate": 2e-4, "max_steps": 9},
                                               "tagging": {"max_steps": 7}},
                          "task_overrides": {"pawsx": {"learning_rate": 9e-4}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    resolved = {}
    for _, args in finetune_jobs(planned_commands(tmp_path / "run", "--configfile", str(path))):
        if "mlm" in option_values(args, "--model")[0].split("/"):
            task = get_task(option_values(args, "--task")[0])
            hp = resolve_hyperparameters(task, parse_overrides(key_value_overrides(args)))
            resolved[task.name] = (hp.learning_rate, hp.max_steps, hp.batch_size)
    assert resolved == {"xnli": (2e-4, 9, 8), "pawsx": (9e-4, 9, 8), "udpos": (1e-5, 7, 8)}


def test_a_family_override_of_an_unknown_family_is_refused(tmp_path):
    config = scale_config("demo")
    config["finetune"]["family_overrides"] = {"retrieval": {"learning_rate": 1e-4}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(path), check=False)
    assert proc.returncode != 0 and "retrieval" in proc.stdout + proc.stderr


def planned_inputs(tmp_path: Path, *args: str) -> dict[tuple[str, str], list[str]]:
    """``(rule, wildcards) -> input files`` of every job of a dry run."""
    proc = snakemake("-n", "--directory", str(tmp_path), *args)
    jobs, rule, inputs = {}, None, []
    for line in proc.stdout.splitlines():
        if line.startswith("rule ") or line.startswith("localrule "):
            rule, inputs = line.split()[1].rstrip(":"), []
        elif line.strip().startswith("input: "):
            inputs = line.strip().removeprefix("input: ").split(", ")
        elif line.strip().startswith("wildcards: ") and rule:
            jobs[(rule, line.strip().removeprefix("wildcards: "))] = inputs
    return jobs


def test_jobs_depend_on_the_packaged_demo_files_of_their_task(tmp_path):
    """A rebuilt demo task (`veco2 data build-demo-tasks --tasks pawsx`) reruns that task's jobs: each
    job declares the files it reads, and only those."""
    jobs = planned_inputs(tmp_path, "--configfile", str(REPO / "config" / "demo.yaml"))
    manifest = yaml.safe_load((REPO / "veco2" / "demo_data" / "xtreme" / "manifest.json").read_text())
    for (rule, wildcards), inputs in jobs.items():
        if rule not in ("finetune", "evaluate_retrieval", "trivial_baseline"):
            continue
        task = dict(part.split("=") for part in wildcards.split(", "))["task"]
        data = sorted(Path(p).relative_to(Path(p).parents[1]).as_posix() for p in inputs if "demo_data" in p)
        folders = {"xquad": {"squad", "xquad"}, "mlqa": {"squad", "mlqa"}}.get(task, {task})
        assert data == sorted(rel for rel in manifest["files"] if rel.split("/")[0] in folders), (rule, task)
    assert ("trivial_baseline", "task=pawsx") in jobs


def test_a_bookkeeping_override_keeps_the_checkpoint_directory(tmp_path):
    """The workflow names checkpoint directories by the same weights hash the trainer checks before
    it resumes: turning on torch.compile or logging more often must not start a run afresh."""
    config = scale_config("demo")
    config["pretrain"]["overrides"] = {**config["pretrain"]["overrides"], "training.compile": True,
                                       "training.log_every": 5, "objectives.seq.temperature": 0.5}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    plain = pretrain_jobs(planned_commands(tmp_path / "a", "--configfile", str(REPO / "config" / "demo.yaml")))
    edited = pretrain_jobs(planned_commands(tmp_path / "b", "--configfile", str(path)))

    def checkpoint_dirs(jobs):
        return {v: next(o for o in overrides if o.startswith("training.checkpoint_dir=")) for v, (_, _, overrides) in jobs.items()}

    # The temperature is part of every variant's resolved config (weights setting): every directory
    # changes.  compile and log_every alone change none.
    config["pretrain"]["overrides"].pop("objectives.seq.temperature")
    path.write_text(yaml.safe_dump(config))
    bookkeeping_only = pretrain_jobs(planned_commands(tmp_path / "c", "--configfile", str(path)))
    assert checkpoint_dirs(bookkeeping_only) == checkpoint_dirs(plain)
    assert all(checkpoint_dirs(edited)[v] != checkpoint_dirs(plain)[v] for v in plain)


def test_the_report_takes_its_reference_variant_from_the_config(scale_commands, tmp_path):
    (report,) = [args for argv in scale_commands("demo") for _, args in [veco2_argv(argv)] if args[:1] == ["report"]]
    assert option_values(report, "--reference") == ["mlm"]
    config = scale_config("demo")
    config["report"]["reference"] = "mlm_sq"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(path), check=False)
    assert proc.returncode != 0 and "report.reference: 'mlm_sq' is not a variant" in proc.stdout + proc.stderr


# The rule each sub-command runs in, for the profile's `set-threads`.
RULE_OF_COMMAND = {"pretrain": "pretrain", "data": "prepare_data", "report": "report", "finetune": "finetune",
                   "evaluate": "evaluate_retrieval", "trivial": "trivial_baseline"}


@pytest.mark.parametrize("scale", ["demo", "base"])
def test_every_job_runs_on_the_threads_its_rule_is_given(scale, scale_commands):
    """`threads:` reaches the program (`veco2 --threads N`, which sets torch's, OpenMP's and the
    tokenizers' threads): without it every co-scheduled job used all cores, and costs measured
    while two jobs shared them were distorted."""
    import os

    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())["set-threads"]
    seen = set()
    for argv in scale_commands(scale):
        _, args = veco2_argv(argv)
        rule = RULE_OF_COMMAND.get(args[0])
        if rule is None:
            continue
        seen.add(rule)
        assert job_threads(argv) == min(profile[rule], os.cpu_count()), argv  # snakemake caps threads at --cores
    assert seen == set(RULE_OF_COMMAND.values())


def test_threads_option_sets_torch_and_the_tokenizers_pool(tmp_path):
    import subprocess
    import sys

    code = ("import os, sys; from veco2 import cli; cli.use_threads(1); import torch; "
            "print(torch.get_num_threads(), os.environ['RAYON_NUM_THREADS'], os.environ['OMP_NUM_THREADS'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1", "1"]

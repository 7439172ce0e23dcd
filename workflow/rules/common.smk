# Shared definitions: paths, the variant list, per-job command-line arguments.
#
# Everything here is evaluated once when Snakemake parses the workflow.  No study logic lives
# here: the rules call the `veco2` command line, and this file only turns the config into the
# file names and arguments those calls need.

import json
import os
import re
import shutil
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from veco2.config import load_config, weights_hash
from veco2.xtreme.data import DEMO_ROOT
from veco2.xtreme.finetune import resolve_hyperparameters
from veco2.xtreme.registry import get_task

# Jobs find the `veco2` console script of the environment Snakemake runs in, even when that
# environment is not activated (`.venv/bin/snakemake ...`): the environment's bin/ goes first on
# the PATH the jobs inherit.
envvars:
    "PATH",


os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
if shutil.which("veco2") is None:
    raise WorkflowError(
        f"the `veco2` command is not installed next to {sys.executable}; run `pip install -e .` "
        "(or `make setup`) in the repository first"
    )

SCALE = config["scale"]
RESULTS = f"results/{SCALE}"
RESOURCES = f"resources/{SCALE}"
LOGS = f"logs/{SCALE}"
BENCH = f"{RESULTS}/benchmarks"


def repo_path(path):
    """A config path: as given when it exists relative to the working directory, else relative to
    the repository (so `--directory elsewhere` still finds config/pretrain/ and ablations/)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = os.path.join(workflow.basedir, path)
    return candidate if os.path.exists(candidate) else path


# ---------------------------------------------------------------------------------------------
# Pre-training variants: one per ablations/*.yaml (adding a file adds a variant to the DAG)

PRETRAIN_CONFIG = repo_path(config["pretrain"]["config"])
PRETRAIN_OVERRIDES = dict(config["pretrain"].get("overrides") or {})
ABLATION_DIR = repo_path(config["variants"]["dir"])


def override_args(overrides):
    """{"training.max_steps": 60} -> ["training.max_steps=60"] (values as YAML, as the CLI parses them)."""
    return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in overrides.items()]


def discover_variants():
    found = sorted(path.stem for path in Path(ABLATION_DIR).glob("*.yaml"))
    if not found:
        raise WorkflowError(f"variants.dir: no *.yaml ablation files in {ABLATION_DIR}")
    wanted = config["variants"]["include"] or found
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        raise WorkflowError(f"variants.include: {', '.join(unknown)} not in {ABLATION_DIR} "
                            f"(it has: {', '.join(found)})")
    return [v for v in wanted if v not in set(config["variants"]["exclude"])]


VARIANTS = discover_variants()


# Baselines: existing models (a hub name or a local path, exactly as `from_pretrained` takes them)
# fine-tuned and scored beside the variants with no pre-training job -- the starting model of a
# continued pre-training run is the row every variant is compared with.
def discover_baselines():
    found = {}
    for entry in config["baselines"]:
        model = entry if isinstance(entry, str) else entry["model"]
        name = entry["name"] if isinstance(entry, dict) and entry.get("name") else Path(model).name
        if name in VARIANTS or name in found:
            raise WorkflowError(f"baselines: the name {name!r} ({model}) is taken by "
                                f"{'a variant' if name in VARIANTS else found[name]}; give it a `name:`")
        found[name] = model
    return found


BASELINES = discover_baselines()
if config["report"]["enabled"] and config["report"]["reference"] not in VARIANTS:
    raise WorkflowError(f"report.reference: {config['report']['reference']!r} is not a variant "
                        f"(variants: {', '.join(VARIANTS)})")
MODELS = [*VARIANTS, *BASELINES]  # every row of the study: pre-trained variants, then baselines


def ablation_file(variant):
    return os.path.join(ABLATION_DIR, f"{variant}.yaml")


# The tokenizer is trained once per scale (when its pre-training config says `data.tokenizer: train`) and
# shared by every variant; a hub tokenizer (base/large: xlm-roberta-*) is used as named.
_pretrain_config = load_config(PRETRAIN_CONFIG, overrides=override_args(PRETRAIN_OVERRIDES))
TRAIN_TOKENIZER = _pretrain_config.data.tokenizer == "train"
TOKENIZER_DIR = f"{RESOURCES}/data/tokenizer"
SHARD_MANIFEST = f"{RESOURCES}/data/shards/manifest.json"
DATA_OVERRIDES = {k: v for k, v in PRETRAIN_OVERRIDES.items() if k.startswith("data.")}
DATA_SETTINGS = json.dumps(_pretrain_config.to_dict()["data"], sort_keys=True)


def variant_config_hash(variant):
    """The weights hash of a variant's resolved pre-training config (veco2.config.weights_hash, the
    same hash the trainer checks before it resumes).  Rolling checkpoints live in a directory named
    by it, so an edited ablation file starts afresh instead of resuming the old run's checkpoints,
    while a bookkeeping change (logging, checkpoint interval, compile) keeps them.  Loading the
    config here also makes a bad key in an ablation file or in pretrain.overrides fail at parse
    time, naming the key."""
    return weights_hash(load_config(PRETRAIN_CONFIG, ablation_file(variant), overrides=override_args(PRETRAIN_OVERRIDES)))


VARIANT_HASH = {variant: variant_config_hash(variant) for variant in VARIANTS}


def pretrain_args(wildcards):
    """KEY=VALUE overrides of `veco2 pretrain` for one variant."""
    data = [f"data.shard_dir={RESOURCES}/data/shards"]
    if TRAIN_TOKENIZER:
        data.insert(0, f"data.tokenizer={TOKENIZER_DIR}")
    checkpoints = f"training.checkpoint_dir={RESOURCES}/checkpoints/{wildcards.variant}/{VARIANT_HASH[wildcards.variant]}"
    return [*data, checkpoints, *override_args(PRETRAIN_OVERRIDES)]


# ---------------------------------------------------------------------------------------------
# XTREME tasks, seeds and data

TASKS = list(config["tasks"])
FAMILY = {task: get_task(task).family for task in TASKS}
FINETUNE_TASKS = [t for t in TASKS if FAMILY[t] != "retrieval"]
RETRIEVAL_TASKS = [t for t in TASKS if FAMILY[t] == "retrieval"]
SEEDS = {task: list(config["seeds"][FAMILY[task]]) for task in FINETUNE_TASKS}
RETRIEVAL_SEED = 0  # retrieval is not fine-tuned: one run, written under seed0
TRIVIAL = "trivial"  # veco2.xtreme.aggregate.TRIVIAL: the trivial baselines' row, xtreme/trivial/TASK/seed0
if TRIVIAL in MODELS:
    raise WorkflowError(f"a model may not be called {TRIVIAL!r}: that name is the trivial baselines' row")

XTREME_SOURCE = config["xtreme"]["source"]
if XTREME_SOURCE == "demo":
    XTREME_ROOT = os.path.relpath(DEMO_ROOT)
elif XTREME_SOURCE == "prefetch":
    XTREME_ROOT = config["xtreme"]["data_root"] or "resources/xtreme"
elif XTREME_SOURCE == "local":
    XTREME_ROOT = config["xtreme"]["data_root"]
    if not XTREME_ROOT:
        raise WorkflowError("xtreme.data_root: required when xtreme.source is local")
else:  # hub
    XTREME_ROOT = None
PREFETCH_MANIFEST = f"{XTREME_ROOT}/manifest.json" if XTREME_SOURCE == "prefetch" else None

for _task in config["languages"]:
    if _task not in TASKS:
        raise WorkflowError(f"languages.{_task}: task {_task!r} is not in `tasks`")
    get_task(_task).check_languages(config["languages"][_task])


def data_args(task):
    """--data-root/--hub and --languages arguments shared by finetune and evaluate."""
    args = ["--hub"] if XTREME_ROOT is None else ["--data-root", XTREME_ROOT]
    if task in config["languages"]:
        args += ["--languages", *config["languages"][task]]
    return args


def gpu_count(resources):
    """GPUs the profile gives a job: `gpu: N` (local runs) or Slurm's `gres: gpu[:TYPE]:N`."""
    match = re.fullmatch(r"gpu(?::[^:]+)?:(\d+)", str(resources.get("gres", "") or ""))
    return int(match[1]) if match else int(resources.get("gpu", 0) or 0)


def launcher(wildcards, resources):
    """The command prefix (a list of arguments) of a GPU job: pinned to its own device(s) by veco2.devices, and run as
    `accelerate launch` with one process per GPU (DDP) when the profile gives it several."""
    gpus = gpu_count(resources)
    pin = ["python", "-m", "veco2.devices", "--count", str(max(gpus, 1)), "--"]
    if gpus > 1:
        return [*pin, "accelerate", "launch", "--multi_gpu", "--num_machines", "1", "--num_processes", str(gpus),
                "--main_process_port", "0", "-m", "veco2.cli"]
    return [*pin, "veco2"]


def model_inputs(wildcards):
    """A variant's pre-trained model (and its DONE marker); nothing for a baseline, which names a
    hub model or an existing directory."""
    if wildcards.variant in BASELINES:
        return {}
    return {"model": model_dir(wildcards.variant), "done": f"{RESULTS}/pretrain/{wildcards.variant}/DONE"}


def model_arg(wildcards):
    return BASELINES.get(wildcards.variant) or model_dir(wildcards.variant)


def finetune_overrides(task):
    """The fine-tuning settings a task's jobs get: `overrides`, then its family's, then its own (later win)."""
    finetune = config["finetune"]
    return {**finetune["overrides"], **finetune["family_overrides"].get(FAMILY[task], {}),
            **finetune["task_overrides"].get(task, {})}


for _task in config["finetune"]["task_overrides"]:
    if _task not in FINETUNE_TASKS:
        raise WorkflowError(f"finetune.task_overrides.{_task}: not a fine-tuned task of `tasks` "
                            f"({', '.join(FINETUNE_TASKS)})")
for _task in FINETUNE_TASKS:  # a misspelt or bad fine-tuning setting fails here, naming the key
    resolve_hyperparameters(get_task(_task), finetune_overrides(_task))


def finetune_args(wildcards):
    # KEY=VALUE overrides first, in one block, as `veco2 pretrain` takes them (--languages would
    # take the words after it)
    args = [f"{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in finetune_overrides(wildcards.task).items()]
    args += data_args(wildcards.task)
    if config["finetune"]["max_steps"] is not None:
        args += ["--max-steps", str(config["finetune"]["max_steps"])]
    if config["finetune"]["translate_train"]:
        args.append("--translate-train")
    return args


def evaluate_args(wildcards):
    args = data_args(wildcards.task)
    layer = config["retrieval"]["layer"]
    if layer is not None:
        args += ["--layer", str(layer)]
    args += ["--pooling", config["retrieval"]["pooling"], "--mixed-precision", config["retrieval"]["mixed_precision"]]
    if config["retrieval"]["batch_size"] is not None:
        args += ["--batch-size", str(config["retrieval"]["batch_size"])]
    return args


def _demo_task_files():
    """Per task, the packaged demo files it reads (the folders its task file names), from the demo
    data's manifest: a rebuilt task's data reruns that task's jobs and no other."""
    files = json.loads(Path(XTREME_ROOT, "manifest.json").read_text(encoding="utf-8"))["files"]
    by_task = {}
    for task in TASKS:
        folders = {Path(pattern).parts[0] for pattern in get_task(task).local["files"].values() if pattern}
        by_task[task] = sorted(os.path.join(XTREME_ROOT, rel) for rel in files if Path(rel).parts[0] in folders)
    return by_task


DEMO_TASK_FILES = _demo_task_files() if XTREME_SOURCE == "demo" else {}


def xtreme_data_input(wildcards):
    """The data a job reads, where the workflow knows it: the prefetched layout's manifest (a
    localrule downloads it) or the packaged demo files of the task."""
    if PREFETCH_MANIFEST:
        return [PREFETCH_MANIFEST]
    return DEMO_TASK_FILES.get(wildcards.task, [])


# ---------------------------------------------------------------------------------------------
# Optuna sweeps (sweep.smk)

SWEEPS = config["sweep"]["studies"]


def sweep_study(wildcards):
    return SWEEPS[wildcards.study]


def sweep_trials(wildcards):
    """The study's trials split over its workers (the first workers take the remainder)."""
    study = sweep_study(wildcards)
    share, extra = divmod(study["trials"], study["workers"])
    return share + (1 if int(wildcards.worker) < extra else 0)


def sweep_args(wildcards):
    study = sweep_study(wildcards)
    return ["--config", repo_path(study["config"]), "--study", wildcards.study,
            "--out", f"{RESULTS}/sweeps/{wildcards.study}", *study["args"]]


def sweep_storage(wildcards):
    return f"{RESULTS}/sweeps/{wildcards.study}/optuna-journal.log"


# ---------------------------------------------------------------------------------------------
# Targets


def model_dir(variant):
    return f"{RESULTS}/pretrain/{variant}/model"


def xtreme_results():
    """Every results.json of the study: model x fine-tuned task x seed, plus model x retrieval task
    (models = the variants and the baselines)."""
    files = [f"{RESULTS}/xtreme/{v}/{t}/seed{s}/results.json" for v in MODELS for t in FINETUNE_TASKS for s in SEEDS[t]]
    files += [f"{RESULTS}/xtreme/{v}/{t}/seed{RETRIEVAL_SEED}/results.json" for v in MODELS for t in RETRIEVAL_TASKS]
    # the trivial baseline of every task: a row of every table, what "learned something" is measured against
    files += [f"{RESULTS}/xtreme/{TRIVIAL}/{t}/seed{RETRIEVAL_SEED}/results.json" for t in [*FINETUNE_TASKS, *RETRIEVAL_TASKS]]
    return files


def final_targets():
    targets = [f"{RESULTS}/pretrain/{v}/DONE" for v in VARIANTS] + xtreme_results()
    if config["report"]["enabled"]:
        targets.append(f"{RESULTS}/report/report.html")
    return targets


wildcard_constraints:
    variant="|".join(map(re.escape, MODELS)),
    task="[a-z0-9]+",
    seed="[0-9]+",

"""Zero-shot cross-lingual fine-tuning on XTREME (classification, tagging, extractive QA).

Protocol (Hu et al. 2020, google-research/xtreme): fine-tune the pre-trained encoder (a local
directory or a Hugging Face hub name, :func:`veco2.pretrained.resolve_pretrained`) on ENGLISH training
data only, select the checkpoint on the ENGLISH dev set, predict every test language with the selected
weights; several seeds give mean +- std.  The loop runs on ``accelerate`` (device placement, bf16/fp16
autocast, DDP under ``accelerate launch``, gradient accumulation, TensorBoard or any accelerate tracker),
writes atomic rolling checkpoints every ``save_steps`` steps and at every evaluation, and resumes a
killed run from the last one.  On CPU in one process the run is bit-for-bit repeatable, resumed or
not.  Settings, task families, checkpoints and logs: ``docs/finetuning.md``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ..config import KEEPS_WEIGHTS, merge_into
from ..errors import ConfigError, Veco2Error
from ..fileio import atomic_write, fault_point, read_json, remove_stale_temporaries, write_text
from ..pretrained import first_line as _first_line, hub_origin, resolve_pretrained
from ..provenance import config_hash, provenance, sha256_file
from ..weights import load_checked
from . import aggregate
from .data import is_demo_root, load_split, local_path, resolve_root, run_languages
from .families import FAMILIES, model_inputs, pad_features, process_state, to_device
from .registry import TaskSpec, get_task
from .results import RunResult, check_statistics, write_example_statistics

log = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class FinetuneSettings:
    """The settings of one fine-tuning run (``docs/finetuning.md``, Settings).

    Resolved by :func:`resolve_hyperparameters`: these defaults, then the task file's
    ``hyperparameters``, then the run's overrides (the workflow's and the command line's ``KEY=VALUE``).  The
    task-file settings have no engine default; a task has only those its file names (QA: the last
    four).  Settings marked with ``KEEPS_WEIGHTS`` do not change the result and are left out of the
    run hash.
    """

    eval_batch_size: int = field(default=64, metadata=KEEPS_WEIGHTS)
    """Examples per forward pass when predicting (dev and test)."""
    adam_epsilon: float = 1e-8
    """AdamW's epsilon."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    eval_steps: int | None = None
    """Evaluate on the English dev set every N steps and after the last one (and only then); None: at the
    end of every epoch and after the last step."""
    max_steps: int | None = None
    """Train exactly this many optimizer steps, going through the training set as often as that takes
    (as ``transformers.TrainingArguments.max_steps`` overrides ``num_train_epochs``); None:
    ``num_train_epochs`` epochs."""
    max_train_examples: int | None = None
    """Train on the first N training examples only (demo / smoke runs); None: all."""
    warmup_steps: int = 0
    """Linear warm-up steps, then linear decay."""
    weight_decay: float = 0.0
    """AdamW weight decay (none on biases and LayerNorm)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """accelerate autocast; fp16 needs a GPU."""
    save_steps: int | None = field(default=500, metadata=KEEPS_WEIGHTS)
    """Rolling checkpoint every N optimizer steps (and at every evaluation); None: at evaluations only."""
    logging_steps: int = field(default=10, metadata=KEEPS_WEIGHTS)
    """Mean training loss and learning rate to the trackers every N steps."""
    report_to: str = field(default="none", metadata=KEEPS_WEIGHTS)
    """``none``, ``tensorboard`` or comma-separated accelerate tracker names (``wandb,mlflow``), or ``all``."""
    learning_rate: float | None = None
    """Task file: peak learning rate."""
    num_train_epochs: int | None = None
    """Task file: epochs over the training set."""
    batch_size: int | None = None
    """Task file: the GLOBAL batch of one optimizer step; each of P processes runs
    ``batch_size / (P * gradient_accumulation_steps)`` examples per forward pass."""
    max_seq_length: int | None = None
    """Task file: tokens per input (lowered to the model's longest input)."""
    doc_stride: int | None = None
    """Task file (QA): context tokens between the starts of consecutive windows."""
    max_query_length: int | None = None
    """Task file (QA): question tokens kept."""
    max_answer_length: int | None = None
    """Task file (QA): longest answer span in tokens."""
    n_best_size: int | None = None
    """Task file (QA): start and end candidates per window."""

    def to_dict(self) -> dict[str, Any]:
        """results.json ``hyperparameters``: the engine settings and those the task file names."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in ENGINE_DEFAULTS or getattr(self, f.name) is not None}

    def result_settings(self) -> dict[str, Any]:
        """:meth:`to_dict` without the settings that do not change the result (the run hash's part)."""
        keeps = {f.name for f in fields(self) if not f.metadata.get("affects_weights", True)}
        return {key: value for key, value in self.to_dict().items() if key not in keeps}


#: The task-file settings (no engine default).
TASK_FILE_SETTINGS = ("learning_rate", "num_train_epochs", "batch_size", "max_seq_length", "doc_stride",
                      "max_query_length", "max_answer_length", "n_best_size")
#: Engine settings and their defaults; every one can be overridden.
ENGINE_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(FinetuneSettings)
                                   if f.name not in TASK_FILE_SETTINGS}
#: Model outputs a zero-gradient pass sums (see :func:`_train_step`).
_OUTPUT_NAMES = ("logits", "start_logits", "end_logits")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def execution_record(device: torch.device, **extra) -> dict:
    """results.json ``execution``: the device this process ran on and, on CUDA, the peak memory its
    tensors held (``torch.cuda.max_memory_allocated``, bytes, since :func:`reset_peak_gpu_memory`;
    None elsewhere), plus ``extra``."""
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"device": str(device), **extra, "peak_gpu_memory_bytes": peak}


def reset_peak_gpu_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------------------------------------
# Model identity and hyper-parameters
# ---------------------------------------------------------------------------------------------

def model_identity(model_dir: str | Path) -> dict:
    """``{"path", "name", "revision", "config_hash", "weights_sha256"}`` of a pre-trained model directory;
    ``name`` and ``revision`` (commit) are set for a Hugging Face cache snapshot (a model given by hub
    name, :func:`veco2.pretrained.hub_origin`), None for a local directory."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise Veco2Error(f"{model_dir}: not a pre-trained model directory (no config.json)")
    weights = {p.name: sha256_file(p) for p in sorted(model_dir.glob("*.safetensors"))}
    weights.update({p.name: sha256_file(p) for p in sorted(model_dir.glob("*.bin"))})
    origin = hub_origin(model_dir) or {"name": None, "revision": None}
    return {"path": str(model_dir), **origin, "config_hash": config_hash(read_json(config_path)),
            "weights_sha256": weights}


def max_model_length(model_dir: str | Path) -> int | None:
    """Longest input the encoder takes: XLM-R/RoBERTa position ids start at ``pad_token_id + 1``,
    so ``max_position_embeddings - pad_token_id - 1`` tokens (512 for XLM-R's 514 positions)."""
    config = read_json(Path(model_dir) / "config.json")
    positions = config.get("max_position_embeddings")
    if positions is None:
        return None
    if config.get("model_type") in ("xlm-roberta", "roberta", "camembert"):
        return positions - int(config.get("pad_token_id", 1)) - 1
    return positions


def cap_length(length: int, model_dir: str | Path, name: str = "max_seq_length") -> int:
    """``length`` lowered to the model's longest input (logged) so that no position runs past the table."""
    limit = max_model_length(model_dir)
    if limit is not None and length > limit:
        log.warning("%s %d exceeds the model's %d positions; using %d", name, length, limit, limit)
        return limit
    return length


def resolve_hyperparameters(task: TaskSpec, overrides: dict | None = None) -> FinetuneSettings:
    """The engine defaults, then the task file's settings, then ``overrides`` (checked)."""
    settings = FinetuneSettings()
    merge_into(settings, dict(task.hyperparameters), task.path or task.name)
    names = [*ENGINE_DEFAULTS, *(key for key in task.hyperparameters if key not in ENGINE_DEFAULTS)]
    overrides = dict(overrides or {})
    for key in overrides:
        if key not in names:
            raise ConfigError(f"unknown fine-tuning setting {key!r}; settings: {', '.join(sorted(names))}")
    resolved = {**settings.to_dict(), **overrides}
    for key in ("batch_size", "max_seq_length", "num_train_epochs", "eval_batch_size",
                "gradient_accumulation_steps", "logging_steps"):
        value = resolved.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    for key in ("max_steps", "save_steps"):
        value = resolved[key]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{key} must be a positive integer or null, got {value!r}")
    if "mixed_precision" in overrides and overrides["mixed_precision"] in (False, None):
        overrides["mixed_precision"] = "no"  # YAML reads `mixed_precision=no` as false
    if overrides.get("mixed_precision", "no") not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                          f"got {overrides['mixed_precision']!r}")
    if "report_to" in overrides:
        overrides["report_to"] = _check_trackers(overrides["report_to"])
    merge_into(settings, overrides, "fine-tuning settings")
    return settings


def _check_trackers(report_to) -> str:
    """``none`` or comma-separated accelerate tracker names (``tensorboard``, ``wandb``, ``all``, ...)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    if report_to in (None, False, "none"):
        return "none"
    names = [name.strip() for name in str(report_to).split(",") if name.strip()]
    known = {"all", *LOGGER_TYPE_TO_CLASS}
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        raise ConfigError(f"report_to {report_to!r}: unknown tracker {', '.join(unknown) or 'name'}; use none or "
                          f"comma-separated names from {', '.join(sorted(known))}")
    return ",".join(names)


def micro_batch_size(settings: FinetuneSettings, num_processes: int) -> int:
    """Examples per forward pass of one process: ``batch_size / (processes * gradient_accumulation_steps)``."""
    parts = num_processes * settings.gradient_accumulation_steps
    if settings.batch_size % parts:
        raise ConfigError(f"batch_size {settings.batch_size} (the global batch of one optimizer step) is not divisible "
                          f"by {num_processes} process(es) x gradient_accumulation_steps "
                          f"{settings.gradient_accumulation_steps}")
    return settings.batch_size // parts


def parse_overrides(pairs: Sequence[str]) -> dict:
    """``["learning_rate=3e-5", "eval_steps=100"]`` -> dict; numbers are int/float, anything else
    a YAML scalar (``null``, ``true``, strings)."""
    import yaml

    def scalar(text: str):
        for convert in (int, float):  # YAML 1.1 would read "3e-5" as a string
            try:
                return convert(text)
            except ValueError:
                pass
        return yaml.safe_load(text)

    result = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ConfigError(f"override {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        result[key.strip()] = scalar(value.strip())
    return result


# ---------------------------------------------------------------------------------------------
# Training one seed
# ---------------------------------------------------------------------------------------------

@dataclass
class _TrainState:
    step: int = 0
    epoch: int = 0
    batches_done: int = 0        # batches of ``epoch`` already trained (for resumption)
    best_score: float | None = None
    best_step: int | None = None
    history: list | None = None


def _load_model(family, model_dir: Path, seed: int):
    import transformers

    set_seed(seed)  # the new head's initialisation depends on the seed only
    auto = getattr(transformers, family.auto_class)
    # Only the new task head may be missing: weights of another model, a truncated or non-finite
    # file is a one-line error, never a silently random encoder (veco2.weights).  float32 master
    # weights whatever dtype the checkpoint was saved in; mixed_precision is autocast.
    return load_checked(auto, model_dir, dtype=torch.float32, **family.model_kwargs())


def _numpy_rng_state() -> tuple:
    """``np.random.get_state()`` with the key array as a tensor, so that the checkpoint holds
    only what ``torch.load(weights_only=True)`` accepts (no pickled numpy objects)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _set_numpy_rng_state(state: tuple) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _load_checkpoint(path: Path) -> dict:
    """Read a fine-tuning checkpoint with ``weights_only=True`` (tensors and plain Python values only)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, or one that is not a veco2 checkpoint
        raise Veco2Error(f"{path}: unreadable fine-tuning checkpoint ({type(err).__name__}: {_first_line(err)}); "
                         "delete it to restart this seed") from None
    if not isinstance(saved, dict) or "run_hash" not in saved:
        raise Veco2Error(f"{path}: not a veco2 fine-tuning checkpoint; delete it to restart this seed")
    return saved


def _optimizer(model, settings: FinetuneSettings):
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": settings.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
         "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.learning_rate, eps=settings.adam_epsilon)


def _dev_score(task: TaskSpec, family, model, dev_examples) -> tuple[float, dict]:
    predictions = family.predict(model, dev_examples)
    scores = family.score(dev_examples, predictions, task.train_language)
    return aggregate.task_score({task.train_language: scores}, task.name, languages=[task.train_language])["score"], scores


def _rank_seed(seed: int, rank: int) -> int:
    """Dropout seed of process ``rank`` > 0; process 0 keeps the stream of ``set_seed(seed)``, so one
    process draws exactly what the single-process loop draws."""
    return seed * 1000 + 100_003 * rank


def _rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _restore_rng(saved: dict, rank: int, seed: int, device: torch.device) -> None:
    states = saved["rng"]
    if rank < len(states):
        torch.set_rng_state(states[rank]["cpu"])
        if states[rank]["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(states[rank]["cuda"], device)
    else:  # resumed on more processes than saved the checkpoint: a fresh stream for this one
        torch.manual_seed(_rank_seed(seed, rank) + saved["state"]["step"])
    random.setstate(saved["python_rng"])
    _set_numpy_rng_state(saved["numpy_rng"])


def _shares(rows: list[int], parts: int) -> list[list[int]]:
    """``rows`` cut into ``parts`` contiguous pieces whose sizes differ by at most one (all equal for a
    full batch, since ``parts`` divides ``batch_size``; only an epoch's last batch can be uneven)."""
    size, extra = divmod(len(rows), parts)
    bounds = [k * size + min(k, extra) for k in range(parts + 1)]
    return [rows[bounds[k]:bounds[k + 1]] for k in range(parts)]


def _loss_units(feature: dict) -> int:
    """Terms ``feature`` adds to the model's mean loss: its labelled tokens (tagging), else 1 (one row)."""
    labels = feature["labels"] if "labels" in feature else None
    return sum(label != -100 for label in labels) if isinstance(labels, list) else 1


def _train_step(model, accelerator, features: list[dict], rows: list[int], pad_id: int, accumulation: int):
    """Forward and backward passes of one optimizer step on this process's share of the global batch
    ``rows``; returns the (detached) share of the global mean loss it computed.

    The global batch is cut into ``processes * accumulation`` micro-batches; this process runs
    ``accumulation`` of them.  Each micro-batch loss (a mean over its examples, or its labelled tokens
    for tagging) is weighted by its share of the global batch's loss terms, times the process count
    that DDP's gradient averaging divides back out, so the summed gradient is that of the mean loss
    over the whole global batch -- also for an uneven last batch.  With one process and no
    accumulation the weight is exactly 1 and the loss is the model's own, untouched.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    shares = _shares(rows, world * accumulation)
    total_units = sum(_loss_units(features[i]) for i in rows)
    step_loss = torch.zeros((), device=accelerator.device)
    for micro in range(accumulation):
        share = shares[rank * accumulation + micro]
        units = sum(_loss_units(features[i]) for i in share)
        # gradients are all-reduced only with the last micro-batch
        sync = contextlib.nullcontext() if micro == accumulation - 1 else accelerator.no_sync(model)
        with sync:
            if units:
                batch = to_device(pad_features([features[i] for i in share], pad_id), accelerator.device)
                loss = model(**batch).loss
                weight = world * units / total_units
                if weight != 1.0:
                    loss = loss * weight
            else:  # nothing of the batch to learn from here: a zero-gradient pass keeps DDP's all-reduce in step
                batch = to_device(pad_features(model_inputs([features[i] for i in share or rows[:1]]), pad_id),
                                   accelerator.device)
                out = model(**batch)
                loss = sum(getattr(out, k).float().sum() for k in _OUTPUT_NAMES if getattr(out, k, None) is not None) * 0.0
            accelerator.backward(loss)
        step_loss += loss.detach()
    return step_loss


def check_runtime(settings: FinetuneSettings) -> None:
    """Refuse what accelerate would silently ignore here: fp16 without a GPU, an uninstalled tracker."""
    from accelerate.tracking import get_available_trackers

    if settings.mixed_precision == "fp16" and process_state().device.type == "cpu":  # accelerate would run fp32
        raise ConfigError("mixed_precision fp16 needs a GPU; use bf16 on a CPU")
    available = {str(tracker) for tracker in get_available_trackers()}
    missing = [name for name in settings.report_to.split(",") if name not in ("none", "all") and name not in available]
    if missing:
        raise ConfigError(f"report_to={settings.report_to}: the package of {', '.join(missing)} is not installed "
                          f"(pip install {' '.join(missing)})")


def make_accelerator(settings: FinetuneSettings, logging_dir: Path):
    """The ``accelerate.Accelerator`` of one seed: ``settings.mixed_precision``, trackers ``settings.report_to``
    writing under ``logging_dir`` (TensorBoard: ``logging_dir/veco2-finetune/``)."""
    from accelerate import Accelerator

    check_runtime(settings)
    trackers = None if settings.report_to == "none" else settings.report_to.split(",")
    return Accelerator(mixed_precision=settings.mixed_precision, log_with=trackers, project_dir=str(logging_dir))


def train_seed(task: TaskSpec, family, model_dir: Path, seed_dir: Path, seed: int, settings: FinetuneSettings,
               train_features: list[dict], dev_examples: list[dict] | None, run_hash: str, accelerator=None):
    """Fine-tune one seed; returns (model with the selected weights, state).  Resumes from
    ``seed_dir/checkpoint.pt`` when it belongs to the same run (same ``run_hash``).

    ``accelerator`` (default :func:`make_accelerator`) places the model and every batch on its device
    and runs DDP under ``accelerate launch``; every process must call this, only the main one writes.
    """
    from accelerate.utils import gather_object
    from safetensors.torch import load_file
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    accelerator = accelerator or make_accelerator(settings, seed_dir / "logs")
    rank, device, main = accelerator.process_index, accelerator.device, accelerator.is_main_process
    accumulation = settings.gradient_accumulation_steps
    micro_batch_size(settings, accelerator.num_processes)  # checks that the global batch divides
    model = _load_model(family, model_dir, seed)
    optimizer = _optimizer(model, settings)
    per_epoch = math.ceil(len(train_features) / settings.batch_size)
    total = settings.max_steps if settings.max_steps is not None else per_epoch * settings.num_train_epochs
    # The scheduler is not prepared: accelerate's wrapper would step it once per process and step.
    scheduler = get_linear_schedule_with_warmup(optimizer, min(settings.warmup_steps, total), total)
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)  # DDP's inner module (same parameters), for saving and predicting
    if rank:
        torch.manual_seed(_rank_seed(seed, rank))  # each process its own dropout
    state = _TrainState(history=[])
    checkpoint, best_path = seed_dir / "checkpoint.pt", seed_dir / "best.safetensors"

    if main:
        remove_stale_temporaries(seed_dir)  # what a kill in the middle of an atomic write left behind
    if checkpoint.exists():
        saved = _load_checkpoint(checkpoint)
        if saved.get("run_hash") == run_hash:
            try:
                core.load_state_dict(saved["model"])
            except RuntimeError as err:
                raise Veco2Error(f"{checkpoint}: checkpoint of another architecture ({_first_line(err)})") from None
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            _restore_rng(saved, rank, seed, device)
            state = _TrainState(**saved["state"])
            log.info("%s seed %d: resuming at step %d (epoch %d, batch %d)", task.name, seed, state.step,
                     state.epoch, state.batches_done)
        else:
            log.warning("%s: checkpoint of a different run (settings changed); starting afresh", checkpoint)

    def save_checkpoint():
        rng = gather_object([_rng_state(device)])  # collective: every process's dropout stream
        if main:
            with atomic_write(checkpoint, "wb") as handle:
                torch.save({"run_hash": run_hash, "model": core.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "rng": rng, "python_rng": random.getstate(),
                            "numpy_rng": _numpy_rng_state(), "state": state.__dict__}, handle)

    def evaluate_and_checkpoint():
        if dev_examples is not None:
            score, scores = _dev_score(task, family, core, dev_examples)
            state.history.append({"step": state.step, "epoch": state.epoch, "dev_score": score, "dev": scores})
            log.info("%s seed %d step %d: English dev score %.2f", task.name, seed, state.step, score)
            accelerator.log({"eval/dev_score": score}, step=state.step)
            better = state.best_score is None or score > state.best_score
        else:  # no English dev set (TyDiQA-GoldP): keep the latest weights
            state.history.append({"step": state.step, "epoch": state.epoch})
            score, better = None, True
        if better:
            state.best_score, state.best_step = score, state.step
            if main:
                with atomic_write(best_path, "wb") as handle:
                    handle.write(_safetensors_bytes(core.state_dict()))
        model.train()
        save_checkpoint()

    accelerator.init_trackers("veco2-finetune", config={"task": task.name, "seed": seed, **{
        k: v for k, v in settings.to_dict().items() if isinstance(v, (bool, int, float, str))}})
    progress = tqdm(total=total, initial=state.step, disable=not accelerator.is_local_main_process,
                    desc=f"{task.name} seed {seed}", unit="step")
    window_loss, window_steps = torch.zeros((), device=device), 0
    model.train()
    pad_id = family.tokenizer.pad_token_id
    eval_steps, save_steps = settings.eval_steps, settings.save_steps
    while state.step < total:
        order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(seed * 1000 + state.epoch))
        batches = [order[i:i + settings.batch_size].tolist() for i in range(0, len(order), settings.batch_size)]
        for b in range(state.batches_done, len(batches)):
            window_loss += _train_step(model, accelerator, train_features, batches[b], pad_id, accumulation)
            accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            if not accelerator.optimizer_step_was_skipped:  # fp16: an overflowing step changes nothing
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batches_done = b + 1
            if state.batches_done == len(batches):
                state.epoch, state.batches_done = state.epoch + 1, 0
            window_steps += 1
            progress.update(1)
            if state.step % settings.logging_steps == 0 or state.step >= total:
                record = {"train/loss": float(accelerator.reduce(window_loss, "mean")) / window_steps,
                          "train/learning_rate": scheduler.get_last_lr()[0],
                          "train/epoch": state.epoch + state.batches_done / len(batches)}
                accelerator.log(record, step=state.step)
                progress.set_postfix(loss=f"{record['train/loss']:.4f}", lr=f"{record['train/learning_rate']:.2e}")
                window_loss, window_steps = torch.zeros((), device=device), 0
            epoch_end = state.batches_done == 0
            if state.step >= total or (state.step % eval_steps == 0 if eval_steps else epoch_end):
                evaluate_and_checkpoint()
            elif save_steps and state.step % save_steps == 0:
                save_checkpoint()
            fault_point(f"finetune-step:{state.step}")  # crash tests: killed between steps
            if state.step >= total or epoch_end:  # a new epoch: a new order
                break
    progress.close()
    accelerator.wait_for_everyone()  # the main process has written best.safetensors
    missing = not best_path.exists()  # zero steps to run (e.g. max_steps reached before a restart)
    accelerator.wait_for_everyone()  # every process has looked before the main one writes it
    if missing:
        evaluate_and_checkpoint()
        accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # not accelerator.end_training(): it ends the process group too
        tracker.finish()
    core.load_state_dict(load_file(best_path))
    return core, state


def _safetensors_bytes(state_dict: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state_dict.items()})


# ---------------------------------------------------------------------------------------------
# The run: data once, then every seed
# ---------------------------------------------------------------------------------------------

def run_finetune(task: str | TaskSpec, model_dir: str | Path, out_dir: str | Path, seeds: Sequence[int] = (1, 2, 3),
                 data_root: str | Path | None = None, hub: bool = False, overrides: dict | None = None,
                 languages: Sequence[str] | None = None, translate_train: bool = False) -> list[dict]:
    """Fine-tune ``model_dir`` on ``task`` under the zero-shot protocol, once per seed.

    Args:
        task: registry name (``xnli``, ``pawsx``, ``udpos``, ``panx``, ``xquad``, ``mlqa``, ``tydiqa``).
        model_dir: pre-trained model: a Hugging Face directory (config.json + weights + tokenizer files)
            or a hub name such as ``xlm-roberta-base`` (:func:`veco2.pretrained.resolve_pretrained`).
        out_dir: results root; writes ``{task}/seed{S}/results.json`` and
            ``{task}/seed{S}/predictions/{task}/test-{lang}.{tsv|json}``.
        seeds: fine-tuning seeds.
        data_root: local official-format layout (default: ``$VECO2_XTREME_DATA`` or the packaged demo data,
            whose languages are then the ones it has).  Ignored when ``hub`` is True.
        hub: read ``google/xtreme`` from the Hugging Face hub instead (network).
        overrides: settings on top of the task file (fields of :class:`FinetuneSettings`), e.g.
            ``{"max_steps": 20, "batch_size": 8}``.
        languages: test languages (default: the task's official list).
        translate_train: add machine-translated train data of every test language (docs/finetuning.md).

    Under ``accelerate launch`` every process runs this and returns the same records; only the main
    process writes files.  Returns the list of results dicts (one per seed), as written to results.json.
    """
    from transformers import AutoTokenizer

    spec = get_task(task)
    if spec.family not in FAMILIES:
        raise Veco2Error(f"{spec.name} is a {spec.family} task without fine-tuning; use `veco2 evaluate --task {spec.name}`")
    out_dir = Path(out_dir)
    settings = resolve_hyperparameters(spec, overrides)
    check_runtime(settings)
    micro = micro_batch_size(settings, process_state().num_processes)
    model_dir = resolve_pretrained(model_dir)
    settings.max_seq_length = cap_length(settings.max_seq_length, model_dir)
    test_languages = run_languages(spec, languages, data_root, hub)
    subset = sorted(test_languages) != sorted(spec.languages)  # a declared subset (demo data)
    root = None if hub else resolve_root(data_root)
    data_info = {"source": "hub" if hub else "local", "root": None if hub else str(root),
                 "demo": bool(root is not None and is_demo_root(root)), "translate_train": translate_train}
    if data_info["demo"]:
        log.warning("%s: using the packaged DEMO data; its scores are not comparable with published XTREME numbers",
                    spec.name)

    train = load_split(spec, "train", spec.train_language, data_root=data_root, hub=hub)
    if translate_train:
        for lang in test_languages:
            if lang != spec.train_language:
                train = train + load_split(spec, "translate_train", lang, data_root=data_root)
    if settings.max_train_examples:
        train = train[:settings.max_train_examples]
    dev = load_split(spec, "dev", spec.train_language, data_root=data_root, hub=hub)
    tests = {lang: load_split(spec, "test", lang, data_root=data_root, hub=hub) for lang in test_languages}

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    family = FAMILIES[spec.family](spec, tokenizer, settings)
    family.source = (f"{spec.hub['train']['path']} (hub)" if hub and spec.hub.get("train") else
                     str(local_path(spec, "train", spec.train_language, root)) if root is not None else "")
    train_features = family.train_features(train)
    if not train_features:
        raise Veco2Error(f"{spec.name}: no usable training examples")
    identity = model_identity(model_dir)
    hashed_settings = settings.result_settings()

    results = []
    for seed in seeds:
        seed_dir = out_dir / spec.name / f"seed{seed}"
        run_config = {"task": spec.name, "version": spec.version, "seed": seed, "hyperparameters": hashed_settings,
                      "model": identity, "languages": test_languages, "data": data_info,
                      "n_train": len(train)}
        run_hash = config_hash(run_config)
        results_path = seed_dir / "results.json"
        if results_path.exists():
            previous = read_json(results_path)
            if previous.get("run_hash") == run_hash:
                log.info("%s: already done with the same settings, skipping", results_path)
                results.append(previous)
                continue
        started = time.time()
        accelerator = make_accelerator(settings, seed_dir / "logs")
        reset_peak_gpu_memory(accelerator.device)  # the peak recorded is this seed's
        model, state = train_seed(spec, family, model_dir, seed_dir, seed, settings, train_features, dev, run_hash,
                                  accelerator=accelerator)
        scores, statistics = {}, {}
        for lang, examples in tests.items():
            predictions = family.predict(model, examples)  # sharded over the processes, gathered
            if accelerator.is_main_process:
                write_text(seed_dir / "predictions" / spec.name / f"test-{lang}.{family.suffix}",
                           family.prediction_text(predictions))
            scores[lang] = family.score(examples, predictions, lang)
            statistics[lang] = family.statistics(examples, predictions, lang)
            check_statistics(statistics[lang], scores[lang], f"{spec.name} {lang}")
        summary = aggregate.task_score(scores, spec.name, languages=test_languages)
        result = RunResult(
            task=spec.name, version=spec.version, languages=test_languages, seed=seed,
            scores=scores, task_score=summary["score"], task_means=summary,
            language_subset=subset,
            selection={"on": f"{spec.train_language} dev" if dev is not None else "final checkpoint (no dev set)",
                       "best_step": state.best_step, "best_dev_score": state.best_score,
                       "steps": state.step, "history": state.history},
            hyperparameters=settings.to_dict(), model=identity, data=data_info, n_train_examples=len(train),
            n_train_features=len(train_features),
            execution=execution_record(accelerator.device, num_processes=accelerator.num_processes,
                                       micro_batch_size=micro, mixed_precision=accelerator.mixed_precision),
            wall_seconds=round(time.time() - started, 2),
            run_hash=run_hash, provenance=provenance(run_config),
        )
        if accelerator.is_main_process:
            write_example_statistics(seed_dir, statistics)
            result.write(results_path)
            (seed_dir / "checkpoint.pt").unlink(missing_ok=True)
        accelerator.wait_for_everyone()  # no process looks at the next seed's files before they are final
        results.append(result.to_json())
    return results

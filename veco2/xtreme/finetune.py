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
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, Veco2Error
from ..fileio import atomic_write, fault_point, read_json, remove_stale_temporaries, write_json, write_text
from ..pretrained import first_line as _first_line, hub_origin, resolve_pretrained
from ..provenance import config_hash, provenance, sha256_file
from ..weights import load_checked
from . import aggregate, metrics
from .data import available_languages, is_demo_root, load_split, local_path, resolve_root, word_windows
from .registry import TaskSpec, get_task

log = logging.getLogger(__name__)

#: Engine settings that are not in the task files; every one can be overridden (``--set key=value``).
#: ``batch_size`` (task file) is the GLOBAL batch of one optimizer step: each of P processes runs
#: ``batch_size / (P * gradient_accumulation_steps)`` examples per forward pass.
ENGINE_DEFAULTS: dict[str, Any] = {
    "eval_batch_size": 64,     # examples per forward pass when predicting (dev and test)
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    "eval_steps": None,        # None: evaluate on the English dev set at the end of every epoch
    "max_steps": None,         # cap on optimisation steps (tests / demo); None = num_train_epochs
    "max_train_examples": None,  # use only the first N training examples (demo / smoke runs)
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "gradient_accumulation_steps": 1,  # micro-batches per optimizer step
    "mixed_precision": "no",   # "no" | "bf16" | "fp16" (accelerate autocast; fp16 needs a GPU)
    "save_steps": 500,         # rolling checkpoint every N optimizer steps (and at every evaluation)
    "logging_steps": 10,       # mean training loss and learning rate to the trackers every N steps
    "report_to": "none",       # "none", "tensorboard", or accelerate tracker names ("wandb", "mlflow,tensorboard")
}
# QA-only settings (doc_stride, max_query_length, max_answer_length, n_best_size) come from the QA task files.
#: Keys whose change does not change the result (left out of the run hash).
_NON_RESULT_KEYS = ("eval_batch_size", "save_steps", "logging_steps", "report_to")
MIXED_PRECISION = ("no", "bf16", "fp16")
#: Model outputs a zero-gradient pass sums (see :func:`_train_step`).
_OUTPUT_NAMES = ("logits", "start_logits", "end_logits")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _pad(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of features to the longest; labels are padded with -100 (ignored)."""
    length = max(len(f["input_ids"]) for f in batch)
    out: dict[str, torch.Tensor] = {}
    for key in batch[0]:
        if key == "input_ids":
            out[key] = torch.tensor([f[key] + [pad_id] * (length - len(f[key])) for f in batch])
        elif key == "attention_mask":
            out[key] = torch.tensor([f[key] + [0] * (length - len(f[key])) for f in batch])
        elif key == "labels" and isinstance(batch[0][key], list):
            out[key] = torch.tensor([f[key] + [-100] * (length - len(f[key])) for f in batch])
        else:
            out[key] = torch.tensor([f[key] for f in batch])
    return out


def _model_inputs(features: list[dict], keys=("input_ids", "attention_mask")) -> list[dict]:
    return [{k: f[k] for k in keys} for f in features]


def process_state():
    """accelerate's ``PartialState`` (device, process count and rank of this process), with
    ``ACCELERATE_USE_CPU=1`` honoured as ``Accelerator`` honours it: under ``torchrun`` on a machine
    without GPUs it is what makes the processes one gloo group instead of independent runs."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def execution_record(device: torch.device, **extra) -> dict:
    """results.json ``execution``: the device this process ran on and, on CUDA, the peak memory its
    tensors held (``torch.cuda.max_memory_allocated``, bytes, since :func:`reset_peak_gpu_memory`;
    None elsewhere), plus ``extra``."""
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"device": str(device), **extra, "peak_gpu_memory_bytes": peak}


def reset_peak_gpu_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _device_of(model) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=device.type == "cuda") for key, value in batch.items()}


@torch.no_grad()
def _forward_batches(model, features: list[dict], batch_size: int, pad_id: int, outputs: Sequence[str]) -> list:
    """Per-feature numpy outputs (e.g. ``logits`` or ``start_logits``/``end_logits``), trimmed to the
    feature's own length, in input order.

    Batches of ``batch_size`` features run on the model's device.  Under ``accelerate launch`` each of
    the P processes runs a contiguous 1/P of the batches and the outputs are gathered, so every process
    returns all of them (every process must call this: the gather is collective).  The batches are
    the same whatever P is, so the outputs do not depend on the process count.
    """
    from accelerate.utils import gather_object

    model.eval()
    device = _device_of(model)
    processes = process_state()
    starts = list(range(0, len(features), batch_size))
    world, rank = processes.num_processes, processes.process_index
    results = []
    for i in starts[len(starts) * rank // world:len(starts) * (rank + 1) // world]:
        chunk = features[i:i + batch_size]
        batch = _to_device(_pad(_model_inputs(chunk), pad_id), device)
        result = model(**batch)
        arrays = [getattr(result, name).float().cpu().numpy() for name in outputs]
        for j, feature in enumerate(chunk):
            n = len(feature["input_ids"])
            results.append([a[j, :n] if a.ndim >= 2 and a.shape[1] == batch["input_ids"].shape[1] else a[j]
                            for a in arrays])
    return gather_object(results) if world > 1 else results


def score_key(metric_name: str) -> str:
    """results.json key of a registry metric (``pos_f1``/``seqeval_f1`` -> ``f1``)."""
    return {"pos_f1": "f1", "seqeval_f1": "f1", "tatoeba_accuracy": "accuracy"}.get(metric_name, metric_name)


# ---------------------------------------------------------------------------------------------
# Task families: featurise, predict, score, write predictions
# ---------------------------------------------------------------------------------------------

class Classification:
    """Sentence-pair classification (XNLI, PAWS-X)."""

    auto_class = "AutoModelForSequenceClassification"

    def __init__(self, task: TaskSpec, tokenizer, hp: dict):
        self.task, self.tokenizer, self.hp = task, tokenizer, hp
        self.label_index = {label: i for i, label in enumerate(task.labels)}

    def model_kwargs(self) -> dict:
        labels = list(self.task.labels)
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {l: i for i, l in enumerate(labels)}}

    def _encode(self, examples):
        return self.tokenizer([e["text_a"] for e in examples], [e["text_b"] for e in examples],
                              truncation=True, max_length=self.hp["max_seq_length"])

    def train_features(self, examples: list[dict]) -> list[dict]:
        if any(e["label"] is None for e in examples):
            raise Veco2Error(f"{self.task.name}: the training data has no labels")
        enc = self._encode(examples)
        return [{"input_ids": ids, "attention_mask": mask, "labels": self.label_index[e["label"]]}
                for ids, mask, e in zip(enc["input_ids"], enc["attention_mask"], examples)]

    def predict(self, model, examples: list[dict]) -> list[str]:
        enc = self._encode(examples)
        features = [{"input_ids": i, "attention_mask": m} for i, m in zip(enc["input_ids"], enc["attention_mask"])]
        out = _forward_batches(model, features, self.hp["eval_batch_size"], self.tokenizer.pad_token_id, ["logits"])
        return [self.task.labels[int(np.argmax(logits))] for (logits,) in out]

    def score(self, examples: list[dict], predictions: list[str], lang: str) -> dict[str, float]:
        gold = [e["label"] for e in examples]
        if any(g is None for g in gold):
            raise Veco2Error(f"{self.task.name} {lang}: the test file has no labels (leaderboard placeholder); "
                             "score it with labelled data (e.g. from the hub via `veco2 prefetch`)")
        return {"accuracy": metrics.accuracy(predictions, gold)}

    @staticmethod
    def prediction_text(predictions: list[str]) -> str:
        return "".join(f"{p}\n" for p in predictions)

    suffix = "tsv"


class Tagging:
    """Word-level sequence labelling (UD-POS, PAN-X); first-subword labelling, long sentences windowed."""

    auto_class = "AutoModelForTokenClassification"
    model_kwargs = Classification.model_kwargs
    suffix = "tsv"

    def __init__(self, task: TaskSpec, tokenizer, hp: dict):
        self.task, self.tokenizer, self.hp = task, tokenizer, hp
        self.label_index = {label: i for i, label in enumerate(task.labels)}
        self.budget = hp["max_seq_length"] - tokenizer.num_special_tokens_to_add(pair=False)

    def windows(self, examples: list[dict]) -> list[tuple[int, int, int]]:
        """``(example index, first word, end word)`` windows that fit ``max_seq_length``."""
        counts = self.tokenizer([e["words"] for e in examples], is_split_into_words=True,
                                add_special_tokens=False)
        result = []
        for i, e in enumerate(examples):
            per_word = [0] * len(e["words"])
            for word_id in counts.word_ids(i):
                if word_id is not None:
                    per_word[word_id] += 1
            result.extend((i, s, t) for s, t in word_windows(per_word, self.budget))
        return result

    def _features(self, examples, with_labels: bool) -> list[dict]:
        windows = self.windows(examples)
        enc = self.tokenizer([examples[i]["words"][s:t] for i, s, t in windows], is_split_into_words=True,
                             truncation=True, max_length=self.hp["max_seq_length"])
        features = []
        for w, (i, s, t) in enumerate(windows):
            word_ids = enc.word_ids(w)
            first = [k for k, wid in enumerate(word_ids) if wid is not None and (k == 0 or word_ids[k - 1] != wid)]
            feature = {"input_ids": enc["input_ids"][w], "attention_mask": enc["attention_mask"][w],
                       "example": i, "word_start": s, "n_words": t - s,
                       "first_subword": {word_ids[k]: k for k in first}}
            if with_labels:
                labels = [-100] * len(word_ids)
                for k in first:
                    labels[k] = self.label_index[examples[i]["tags"][s + word_ids[k]]]
                feature["labels"] = labels
            features.append(feature)
        return features

    def train_features(self, examples: list[dict]) -> list[dict]:
        if any(e["tags"] is None for e in examples):
            raise Veco2Error(f"{self.task.name}: the training data has no tags")
        return [{k: f[k] for k in ("input_ids", "attention_mask", "labels")}
                for f in self._features(examples, with_labels=True)]

    def predict(self, model, examples: list[dict]) -> list[list[str]]:
        """One tag per word for every sentence (windows concatenated back in order)."""
        features = self._features(examples, with_labels=False)
        predictions = [[None] * len(e["words"]) for e in examples]
        unpredicted = 0
        out = _forward_batches(model, features, self.hp["eval_batch_size"], self.tokenizer.pad_token_id, ["logits"])
        for feature, (logits,) in zip(features, out):
            sentence = predictions[feature["example"]]
            for word in range(feature["n_words"]):
                position = feature["first_subword"].get(word)
                if position is None:  # a word the tokenizer turned into nothing: count, give labels[0]
                    unpredicted += 1
                    sentence[feature["word_start"] + word] = self.task.labels[0]
                else:
                    sentence[feature["word_start"] + word] = self.task.labels[int(np.argmax(logits[position]))]
        if unpredicted:
            log.warning("%s: %d words had no subword token and were given %r", self.task.name,
                        unpredicted, self.task.labels[0])
        return predictions

    def score(self, examples: list[dict], predictions: list[list[str]], lang: str) -> dict[str, float]:
        gold = [e["tags"] for e in examples]
        if any(g is None for g in gold):
            raise Veco2Error(f"{self.task.name} {lang}: the test file has no tags (leaderboard placeholder); "
                             "score it with labelled data (e.g. from the hub via `veco2 prefetch`)")
        scores = {}
        for name in self.task.metrics:
            scores[score_key(name)] = metrics.METRICS[name](gold, predictions)
        return scores

    @staticmethod
    def prediction_text(predictions: list[list[str]]) -> str:
        # leaderboard layout: one tag per line, a blank line after every sentence
        return "".join("".join(f"{tag}\n" for tag in sentence) + "\n" for sentence in predictions)


def best_span(start_logits, end_logits, context_mask, n_best: int, max_answer_length: int):
    """The best answer span of one window: ``(score, start, end)`` or None.

    Candidates are the ``n_best`` highest start and end positions; a pair is valid when both lie in
    the context (``context_mask``), ``end >= start`` and ``end - start + 1 <= max_answer_length``.
    Score = ``start_logits[start] + end_logits[end]`` (as BERT/XTREME's SQuAD post-processing).
    """
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    starts = np.argsort(-start_logits, kind="stable")[:n_best]
    ends = np.argsort(-end_logits, kind="stable")[:n_best]
    best = None
    for s in starts:
        if not context_mask[s]:
            continue
        for e in ends:
            if not context_mask[e] or e < s or e - s + 1 > max_answer_length:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, int(s), int(e))
    return best


class QuestionAnswering:
    """Extractive QA (XQuAD, MLQA, TyDiQA-GoldP) with sliding windows and n-best decoding."""

    auto_class = "AutoModelForQuestionAnswering"
    suffix = "json"

    def __init__(self, task: TaskSpec, tokenizer, hp: dict):
        self.task, self.tokenizer, self.hp = task, tokenizer, hp
        self.skipped_answers = 0
        self.source = ""  # where the training questions come from, for the skip message (run_finetune sets it)

    def model_kwargs(self) -> dict:
        return {}

    def _windows(self, example: dict) -> Any:
        """Tokenise one question/context pair into windows ``doc_stride`` context tokens apart."""
        tok, hp = self.tokenizer, self.hp
        question = example["question"].lstrip()
        q = tok(question, add_special_tokens=False, return_offsets_mapping=True)
        if len(q["input_ids"]) > hp["max_query_length"]:  # XTREME truncates long questions
            question = question[:q["offset_mapping"][hp["max_query_length"] - 1][1]]
            q_len = hp["max_query_length"]
        else:
            q_len = len(q["input_ids"])
        room = hp["max_seq_length"] - q_len - tok.num_special_tokens_to_add(pair=True)
        if room < 1:
            raise ConfigError(f"max_seq_length {hp['max_seq_length']} leaves no room for the context "
                              f"after a {q_len}-token question")
        # overlap between consecutive windows = room - doc_stride (so windows start doc_stride apart)
        overlap = max(0, min(room - 1, room - hp["doc_stride"]))
        return tok(question, example["context"], truncation="only_second", max_length=hp["max_seq_length"],
                   stride=overlap, return_overflowing_tokens=True, return_offsets_mapping=True)

    def train_features(self, examples: list[dict]) -> list[dict]:
        features = []
        skipped: dict[str, list[str]] = {"no answer": [], "answer text not at answer_start": []}
        for example in examples:
            if not example["answers"]["text"]:
                skipped["no answer"].append(str(example["id"]))
                continue
            text, start_char = example["answers"]["text"][0], example["answers"]["answer_start"][0]
            end_char = start_char + len(text)
            if example["context"][start_char:end_char] != text:  # misaligned answer (translated data)
                skipped["answer text not at answer_start"].append(str(example["id"]))
                continue
            enc = self._windows(example)
            for w in range(len(enc["input_ids"])):
                offsets, seq_ids = enc["offset_mapping"][w], enc.sequence_ids(w)
                context = [k for k, sid in enumerate(seq_ids) if sid == 1]
                start = end = 0  # answer not in this window: point at <s>
                if context and offsets[context[0]][0] <= start_char and offsets[context[-1]][1] >= end_char:
                    start = next(k for k in context if offsets[k][1] > start_char)
                    end = next(k for k in reversed(context) if offsets[k][0] < end_char)
                features.append({"input_ids": enc["input_ids"][w], "attention_mask": enc["attention_mask"][w],
                                 "start_positions": start, "end_positions": end})
        self.skipped_answers = sum(len(ids) for ids in skipped.values())
        if self.skipped_answers:
            where = f" of {self.source}" if self.source else ""
            reasons = "; ".join(f"{reason}: {len(ids)} (ids {', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})"
                                for reason, ids in skipped.items() if ids)
            log.warning("%s: left out %d training questions%s without a locatable answer -- %s", self.task.name,
                        self.skipped_answers, where, reasons)
        return features

    def predict(self, model, examples: list[dict]) -> dict[str, str]:
        features = []
        for i, example in enumerate(examples):
            enc = self._windows(example)
            for w in range(len(enc["input_ids"])):
                seq_ids = enc.sequence_ids(w)
                features.append({"input_ids": enc["input_ids"][w], "attention_mask": enc["attention_mask"][w],
                                 "example": i, "offsets": enc["offset_mapping"][w],
                                 "context_mask": [sid == 1 for sid in seq_ids]})
        best: dict[int, tuple] = {}
        out = _forward_batches(model, features, self.hp["eval_batch_size"], self.tokenizer.pad_token_id,
                               ["start_logits", "end_logits"])
        for feature, (start_logits, end_logits) in zip(features, out):
            span = best_span(start_logits, end_logits, feature["context_mask"], self.hp["n_best_size"],
                             self.hp["max_answer_length"])
            if span is None:
                continue
            i = feature["example"]
            if i not in best or span[0] > best[i][0]:
                offsets = feature["offsets"]
                best[i] = (span[0], offsets[span[1]][0], offsets[span[2]][1])
        answers = {}
        for i, example in enumerate(examples):
            answers[example["id"]] = example["context"][best[i][1]:best[i][2]].strip() if i in best else ""
        return answers

    def score(self, examples: list[dict], predictions: dict[str, str], lang: str) -> dict[str, float]:
        references = {e["id"]: e["answers"]["text"] for e in examples}
        if self.task.metric == "mlqa_f1_em":
            return metrics.mlqa_f1_em(predictions, references, lang)
        return metrics.METRICS[self.task.metric](predictions, references)

    @staticmethod
    def prediction_text(predictions: dict[str, str]) -> str:
        return json.dumps(predictions, ensure_ascii=False, indent=1) + "\n"


FAMILIES = {"classification": Classification, "tagging": Tagging, "qa": QuestionAnswering}


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


def cap_length(hp: dict, key: str, model_dir: str | Path) -> None:
    """Lower ``hp[key]`` to the model's longest input (logged) so that no position runs past the table."""
    limit = max_model_length(model_dir)
    if limit is not None and hp[key] > limit:
        log.warning("%s %d exceeds the model's %d positions; using %d", key, hp[key], limit, limit)
        hp[key] = limit


def resolve_hyperparameters(task: TaskSpec, overrides: dict | None = None) -> dict:
    """Task-file defaults, then engine defaults for missing keys, then ``overrides`` (checked)."""
    hp = {**ENGINE_DEFAULTS, **task.hyperparameters}
    for key, value in (overrides or {}).items():
        if key not in hp:
            raise ConfigError(f"unknown fine-tuning setting {key!r}; settings: {', '.join(sorted(hp))}")
        hp[key] = value
    for key in ("batch_size", "max_seq_length", "num_train_epochs", "eval_batch_size",
                "gradient_accumulation_steps", "logging_steps"):
        if not isinstance(hp[key], int) or isinstance(hp[key], bool) or hp[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {hp[key]!r}")
    for key in ("max_steps", "save_steps"):
        if hp[key] is not None and (not isinstance(hp[key], int) or isinstance(hp[key], bool) or hp[key] < 1):
            raise ConfigError(f"{key} must be a positive integer or null, got {hp[key]!r}")
    if hp["mixed_precision"] in (False, None):  # YAML reads `--set mixed_precision=no` as false
        hp["mixed_precision"] = "no"
    if hp["mixed_precision"] not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {hp['mixed_precision']!r}")
    hp["report_to"] = _check_trackers(hp["report_to"])
    return hp


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


def micro_batch_size(hp: dict, num_processes: int) -> int:
    """Examples per forward pass of one process: ``batch_size / (processes * gradient_accumulation_steps)``."""
    parts = num_processes * hp["gradient_accumulation_steps"]
    if hp["batch_size"] % parts:
        raise ConfigError(f"batch_size {hp['batch_size']} (the global batch of one optimizer step) is not divisible "
                          f"by {num_processes} process(es) x gradient_accumulation_steps "
                          f"{hp['gradient_accumulation_steps']}")
    return hp["batch_size"] // parts


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
            raise ConfigError(f"--set expects key=value, got {pair!r}")
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


def _optimizer(model, hp: dict):
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": hp["weight_decay"]},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
         "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=hp["learning_rate"], eps=hp["adam_epsilon"])


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
                batch = _to_device(_pad([features[i] for i in share], pad_id), accelerator.device)
                loss = model(**batch).loss
                weight = world * units / total_units
                if weight != 1.0:
                    loss = loss * weight
            else:  # nothing of the batch to learn from here: a zero-gradient pass keeps DDP's all-reduce in step
                batch = _to_device(_pad(_model_inputs([features[i] for i in share or rows[:1]]), pad_id),
                                   accelerator.device)
                out = model(**batch)
                loss = sum(getattr(out, k).float().sum() for k in _OUTPUT_NAMES if getattr(out, k, None) is not None) * 0.0
            accelerator.backward(loss)
        step_loss += loss.detach()
    return step_loss


def check_runtime(hp: dict) -> None:
    """Refuse what accelerate would silently ignore here: fp16 without a GPU, an uninstalled tracker."""
    from accelerate.tracking import get_available_trackers

    if hp["mixed_precision"] == "fp16" and process_state().device.type == "cpu":  # accelerate would run fp32
        raise ConfigError("mixed_precision fp16 needs a GPU; use bf16 on a CPU")
    available = {str(tracker) for tracker in get_available_trackers()}
    missing = [name for name in hp["report_to"].split(",") if name not in ("none", "all") and name not in available]
    if missing:
        raise ConfigError(f"report_to={hp['report_to']}: the package of {', '.join(missing)} is not installed "
                          f"(pip install {' '.join(missing)})")


def make_accelerator(hp: dict, logging_dir: Path):
    """The ``accelerate.Accelerator`` of one seed: ``hp["mixed_precision"]``, trackers ``hp["report_to"]``
    writing under ``logging_dir`` (TensorBoard: ``logging_dir/veco2-finetune/``)."""
    from accelerate import Accelerator

    check_runtime(hp)
    trackers = None if hp["report_to"] == "none" else hp["report_to"].split(",")
    return Accelerator(mixed_precision=hp["mixed_precision"], log_with=trackers, project_dir=str(logging_dir))


def train_seed(task: TaskSpec, family, model_dir: Path, seed_dir: Path, seed: int, hp: dict,
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

    accelerator = accelerator or make_accelerator(hp, seed_dir / "logs")
    rank, device, main = accelerator.process_index, accelerator.device, accelerator.is_main_process
    accumulation = hp["gradient_accumulation_steps"]
    micro_batch_size(hp, accelerator.num_processes)  # checks that the global batch divides
    model = _load_model(family, model_dir, seed)
    optimizer = _optimizer(model, hp)
    per_epoch = math.ceil(len(train_features) / hp["batch_size"])
    total = per_epoch * hp["num_train_epochs"]
    if hp["max_steps"] is not None:
        total = min(total, hp["max_steps"])
    # The scheduler is not prepared: accelerate's wrapper would step it once per process and step.
    scheduler = get_linear_schedule_with_warmup(optimizer, min(hp["warmup_steps"], total), total)
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
        k: v for k, v in hp.items() if isinstance(v, (bool, int, float, str))}})
    progress = tqdm(total=total, initial=state.step, disable=not accelerator.is_local_main_process,
                    desc=f"{task.name} seed {seed}", unit="step")
    window_loss, window_steps = torch.zeros((), device=device), 0
    model.train()
    pad_id = family.tokenizer.pad_token_id
    eval_steps, save_steps = hp["eval_steps"], hp["save_steps"]
    while state.step < total and state.epoch < hp["num_train_epochs"]:
        order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(seed * 1000 + state.epoch))
        batches = [order[i:i + hp["batch_size"]].tolist() for i in range(0, len(order), hp["batch_size"])]
        for b in range(state.batches_done, len(batches)):
            window_loss += _train_step(model, accelerator, train_features, batches[b], pad_id, accumulation)
            accelerator.clip_grad_norm_(model.parameters(), hp["max_grad_norm"])
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
            if state.step % hp["logging_steps"] == 0 or state.step >= total:
                record = {"train/loss": float(accelerator.reduce(window_loss, "mean")) / window_steps,
                          "train/learning_rate": scheduler.get_last_lr()[0],
                          "train/epoch": state.epoch + state.batches_done / len(batches)}
                accelerator.log(record, step=state.step)
                progress.set_postfix(loss=f"{record['train/loss']:.4f}", lr=f"{record['train/learning_rate']:.2e}")
                window_loss, window_steps = torch.zeros((), device=device), 0
            if state.step >= total or state.batches_done == 0 or (eval_steps and state.step % eval_steps == 0):
                evaluate_and_checkpoint()
            elif save_steps and state.step % save_steps == 0:
                save_checkpoint()
            fault_point(f"finetune-step:{state.step}")  # crash tests: killed between steps
            if state.step >= total or state.batches_done == 0:
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

def _resolve_languages(task: TaskSpec, languages, data_root, hub: bool) -> tuple[list[str], bool]:
    """The test languages and whether they are a declared subset (demo data)."""
    if languages:
        return list(task.check_languages(languages)), sorted(languages) != sorted(task.languages)
    if not hub and is_demo_root(resolve_root(data_root)):
        found = available_languages(task, data_root)
        if not found:
            raise Veco2Error(f"{task.name}: the packaged demo data has no test files for this task; pass "
                             f"--data-root DIR fetched with `veco2 prefetch --tasks {task.name} --out DIR`")
        return found, found != list(task.languages)
    return list(task.languages), False


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
        overrides: hyper-parameters on top of the task file (see :data:`ENGINE_DEFAULTS`), e.g.
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
    hp = resolve_hyperparameters(spec, overrides)
    check_runtime(hp)
    micro = micro_batch_size(hp, process_state().num_processes)
    model_dir = resolve_pretrained(model_dir)
    cap_length(hp, "max_seq_length", model_dir)
    test_languages, subset = _resolve_languages(spec, languages, data_root, hub)
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
    if hp["max_train_examples"]:
        train = train[:hp["max_train_examples"]]
    dev = load_split(spec, "dev", spec.train_language, data_root=data_root, hub=hub)
    tests = {lang: load_split(spec, "test", lang, data_root=data_root, hub=hub) for lang in test_languages}

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    family = FAMILIES[spec.family](spec, tokenizer, hp)
    family.source = (f"{spec.hub['train']['path']} (hub)" if hub and spec.hub.get("train") else
                     str(local_path(spec, "train", spec.train_language, root)) if root is not None else "")
    train_features = family.train_features(train)
    if not train_features:
        raise Veco2Error(f"{spec.name}: no usable training examples")
    identity = model_identity(model_dir)
    hashed_hp = {k: v for k, v in hp.items() if k not in _NON_RESULT_KEYS}

    results = []
    for seed in seeds:
        seed_dir = out_dir / spec.name / f"seed{seed}"
        run_config = {"task": spec.name, "version": spec.version, "seed": seed, "hyperparameters": hashed_hp,
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
        accelerator = make_accelerator(hp, seed_dir / "logs")
        reset_peak_gpu_memory(accelerator.device)  # the peak recorded is this seed's
        model, state = train_seed(spec, family, model_dir, seed_dir, seed, hp, train_features, dev, run_hash,
                                  accelerator=accelerator)
        scores = {}
        for lang, examples in tests.items():
            predictions = family.predict(model, examples)  # sharded over the processes, gathered
            if accelerator.is_main_process:
                write_text(seed_dir / "predictions" / spec.name / f"test-{lang}.{family.suffix}",
                           family.prediction_text(predictions))
            scores[lang] = family.score(examples, predictions, lang)
        summary = aggregate.task_score(scores, spec.name, languages=test_languages)
        record = {
            "task": spec.name, "version": spec.version, "languages": test_languages, "seed": seed,
            "scores": scores, "task_score": summary["score"], "task_means": summary,
            "language_subset": subset,
            "selection": {"on": f"{spec.train_language} dev" if dev is not None else "final checkpoint (no dev set)",
                          "best_step": state.best_step, "best_dev_score": state.best_score,
                          "steps": state.step, "history": state.history},
            "hyperparameters": hp, "model": identity, "data": data_info, "n_train_examples": len(train),
            "n_train_features": len(train_features),
            "execution": execution_record(accelerator.device, num_processes=accelerator.num_processes,
                                          micro_batch_size=micro, mixed_precision=accelerator.mixed_precision),
            "wall_seconds": round(time.time() - started, 2),
            "run_hash": run_hash, "provenance": provenance(run_config),
        }
        if accelerator.is_main_process:
            write_json(results_path, record)
            (seed_dir / "checkpoint.pt").unlink(missing_ok=True)
        accelerator.wait_for_everyone()  # no process looks at the next seed's files before they are final
        results.append(record)
    return results

"""Zero-shot cross-lingual fine-tuning on XTREME (classification, tagging, extractive QA).

Protocol (Hu et al. 2020, google-research/xtreme): fine-tune the pre-trained encoder on ENGLISH
training data only, select the checkpoint on the ENGLISH dev set (evaluated at the end of every
epoch, or every ``eval_steps`` steps), then predict every test language with the selected weights.
Several seeds give mean +- std (aggregated by :mod:`veco2.xtreme.aggregate`).

Engine: a plain PyTorch loop around ``transformers`` AutoModelFor{SequenceClassification,
TokenClassification,QuestionAnswering} loaded from the pre-trained directory (the heads are new,
initialised under the run's seed).  AdamW (no decay on biases / LayerNorm), linear warm-up then linear
decay, gradient clipping at ``max_grad_norm``.  Why not ``transformers.Trainer``: the loop is short,
and owning it makes determinism and exact resumption easy to state and to test.

Determinism: for a fixed seed on CPU the run is bit-for-bit repeatable: the head initialisation,
dropout and the per-epoch shuffle all come from seeded generators (the shuffle order of epoch ``e``
is ``randperm(n, seed * 1000 + e)``, independent of anything that happened before).

Resumption: at every evaluation the loop writes ``{task}/seed{S}/checkpoint.pt`` (weights, optimizer,
scheduler, RNG states, step, best dev score so far; atomic) and the best weights so far to
``best.safetensors``.  A killed run started again with the same arguments resumes from the checkpoint
(skipping the batches of the interrupted epoch that were already done) and ends with the same result
as an uninterrupted run.  A seed whose ``results.json`` exists with the same run hash is skipped.
``checkpoint.pt`` is deleted when the seed finishes; ``best.safetensors`` is kept.

Task families:

- classification: ``<s> a </s></s> b </s>`` truncated to ``max_seq_length``; accuracy.
- tagging: each word's FIRST subword carries its label (other subwords get -100 and are ignored);
  prediction = argmax at first subwords; scored on words.  Sentences longer than ``max_seq_length``
  are split into word windows (:func:`veco2.xtreme.data.word_windows`) and their predictions
  concatenated back, so every word of every sentence gets a prediction.
- qa: question + context windows of ``max_seq_length`` tokens, consecutive windows starting
  ``doc_stride`` context tokens apart (XTREME's / BERT's meaning of doc stride); a window that does
  not contain the answer is trained to point at ``<s>``.  Decoding: n-best start and end logits per
  window, spans inside the context, ``end >= start``, at most ``max_answer_length`` tokens, best
  ``start + end`` logit over all windows of the question, mapped back to the context text through the
  tokenizer's character offsets.  XQuAD and TyDiQA are scored with ``squad_f1_em``, MLQA with
  ``mlqa_f1_em(lang)``.

Translate-train (``translate_train=True``, XTREME's translate-train-all): the training set is the
English data plus every requested language's machine-translated train file from the local layout
(``train-LANG`` for the TSV tasks, the task file's ``translate_train`` template for QA); a missing
file is an error.  Checkpoint selection stays on the English dev set.
"""

from __future__ import annotations

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
from ..fileio import atomic_write, fault_point, read_json, write_json, write_text
from ..provenance import config_hash, provenance, sha256_file
from . import aggregate, metrics
from .data import is_demo_root, load_split, resolve_root, word_windows, available_languages
from .registry import TaskSpec, get_task

log = logging.getLogger(__name__)

#: Engine settings that are not in the task files; every one can be overridden (``--set key=value``).
ENGINE_DEFAULTS: dict[str, Any] = {
    "eval_batch_size": 64,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    "eval_steps": None,        # None: evaluate on the English dev set at the end of every epoch
    "max_steps": None,         # cap on optimisation steps (tests / demo); None = num_train_epochs
    "max_train_examples": None,  # use only the first N training examples (demo / smoke runs)
    "warmup_steps": 0,
    "weight_decay": 0.0,
}
# QA-only settings (doc_stride, max_query_length, max_answer_length, n_best_size) come from the QA task files.
#: Keys whose change does not change the result (left out of the run hash).
_NON_RESULT_KEYS = ("eval_batch_size",)


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


@torch.no_grad()
def _forward_batches(model, features: list[dict], batch_size: int, pad_id: int, outputs: Sequence[str]):
    """Yield per-feature numpy outputs (e.g. ``logits`` or ``start_logits``/``end_logits``),
    trimmed to the feature's own length."""
    model.eval()
    for i in range(0, len(features), batch_size):
        chunk = features[i:i + batch_size]
        batch = _pad(_model_inputs(chunk), pad_id)
        result = model(**batch)
        arrays = [getattr(result, name).float().numpy() for name in outputs]
        for j, feature in enumerate(chunk):
            n = len(feature["input_ids"])
            yield [a[j, :n] if a.ndim >= 2 and a.shape[1] == batch["input_ids"].shape[1] else a[j]
                   for a in arrays]


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
        for example in examples:
            if not example["answers"]["text"]:
                self.skipped_answers += 1
                continue
            text, start_char = example["answers"]["text"][0], example["answers"]["answer_start"][0]
            end_char = start_char + len(text)
            if example["context"][start_char:end_char] != text:  # misaligned answer (translated data)
                self.skipped_answers += 1
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
        if self.skipped_answers:
            log.warning("%s: left out %d training questions without a locatable answer", self.task.name,
                        self.skipped_answers)
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
    """``{"path", "config_hash", "weights_sha256"}`` of a pre-trained model directory."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise Veco2Error(f"{model_dir}: not a pre-trained model directory (no config.json)")
    weights = {p.name: sha256_file(p) for p in sorted(model_dir.glob("*.safetensors"))}
    weights.update({p.name: sha256_file(p) for p in sorted(model_dir.glob("*.bin"))})
    return {"path": str(model_dir), "config_hash": config_hash(read_json(config_path)), "weights_sha256": weights}


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
    for key in ("batch_size", "max_seq_length", "num_train_epochs"):
        if not isinstance(hp[key], int) or hp[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {hp[key]!r}")
    if hp["max_steps"] is not None and (not isinstance(hp["max_steps"], int) or hp["max_steps"] < 1):
        raise ConfigError(f"max_steps must be a positive integer, got {hp['max_steps']!r}")
    return hp


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
    try:
        return auto.from_pretrained(model_dir, **family.model_kwargs())
    except Exception as err:  # truncated weights (safetensors' own error type), another architecture
        raise Veco2Error(f"{model_dir}: cannot load the pre-trained model "
                         f"({type(err).__name__}: {_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


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


def train_seed(task: TaskSpec, family, model_dir: Path, seed_dir: Path, seed: int, hp: dict,
               train_features: list[dict], dev_examples: list[dict] | None, run_hash: str):
    """Fine-tune one seed; returns (model with the selected weights, state).  Resumes from
    ``seed_dir/checkpoint.pt`` when it belongs to the same run (same ``run_hash``)."""
    from safetensors.torch import load_file
    from transformers import get_linear_schedule_with_warmup

    model = _load_model(family, model_dir, seed)
    optimizer = _optimizer(model, hp)
    per_epoch = math.ceil(len(train_features) / hp["batch_size"])
    total = per_epoch * hp["num_train_epochs"]
    if hp["max_steps"] is not None:
        total = min(total, hp["max_steps"])
    scheduler = get_linear_schedule_with_warmup(optimizer, min(hp["warmup_steps"], total), total)
    state = _TrainState(history=[])
    checkpoint, best_path = seed_dir / "checkpoint.pt", seed_dir / "best.safetensors"

    if checkpoint.exists():
        saved = _load_checkpoint(checkpoint)
        if saved.get("run_hash") == run_hash:
            try:
                model.load_state_dict(saved["model"])
            except RuntimeError as err:
                raise Veco2Error(f"{checkpoint}: checkpoint of another architecture ({_first_line(err)})") from None
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["torch_rng"])
            random.setstate(saved["python_rng"])
            _set_numpy_rng_state(saved["numpy_rng"])
            state = _TrainState(**saved["state"])
            log.info("%s seed %d: resuming at step %d (epoch %d, batch %d)", task.name, seed, state.step,
                     state.epoch, state.batches_done)
        else:
            log.warning("%s: checkpoint of a different run (settings changed); starting afresh", checkpoint)

    def evaluate_and_checkpoint():
        if dev_examples is not None:
            score, scores = _dev_score(task, family, model, dev_examples)
            state.history.append({"step": state.step, "epoch": state.epoch, "dev_score": score, "dev": scores})
            log.info("%s seed %d step %d: English dev score %.2f", task.name, seed, state.step, score)
            better = state.best_score is None or score > state.best_score
        else:  # no English dev set (TyDiQA-GoldP): keep the latest weights
            state.history.append({"step": state.step, "epoch": state.epoch})
            score, better = None, True
        if better:
            state.best_score, state.best_step = score, state.step
            with atomic_write(best_path, "wb") as handle:
                handle.write(_safetensors_bytes(model.state_dict()))
        model.train()
        with atomic_write(checkpoint, "wb") as handle:
            torch.save({"run_hash": run_hash, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                        "python_rng": random.getstate(), "numpy_rng": _numpy_rng_state(),
                        "state": state.__dict__}, handle)

    model.train()
    pad_id = family.tokenizer.pad_token_id
    eval_steps = hp["eval_steps"]
    while state.step < total and state.epoch < hp["num_train_epochs"]:
        order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(seed * 1000 + state.epoch))
        batches = [order[i:i + hp["batch_size"]].tolist() for i in range(0, len(order), hp["batch_size"])]
        for b in range(state.batches_done, len(batches)):
            batch = _pad([train_features[i] for i in batches[b]], pad_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batches_done = b + 1
            if state.batches_done == len(batches):
                state.epoch, state.batches_done = state.epoch + 1, 0
            if state.step >= total or state.batches_done == 0 or (eval_steps and state.step % eval_steps == 0):
                evaluate_and_checkpoint()
            fault_point(f"finetune-step:{state.step}")  # crash tests: killed between steps
            if state.step >= total or state.batches_done == 0:
                break
    if not best_path.exists():  # zero steps to run (e.g. max_steps reached before a restart)
        evaluate_and_checkpoint()
    model.load_state_dict(load_file(best_path))
    return model, state


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
        model_dir: pre-trained Hugging Face directory (config.json + weights + tokenizer files).
        out_dir: results root; writes ``{task}/seed{S}/results.json`` and
            ``{task}/seed{S}/predictions/{task}/test-{lang}.{tsv|json}``.
        seeds: fine-tuning seeds.
        data_root: local official-format layout (default: ``$VECO2_XTREME_DATA`` or the packaged demo data,
            whose languages are then the ones it has).  Ignored when ``hub`` is True.
        hub: read ``google/xtreme`` from the Hugging Face hub instead (network).
        overrides: hyper-parameters on top of the task file (see :data:`ENGINE_DEFAULTS`), e.g.
            ``{"max_steps": 20, "batch_size": 8}``.
        languages: test languages (default: the task's official list).
        translate_train: add machine-translated train data of every test language (see module docs).

    Returns the list of results dicts (one per seed), as written to results.json.
    """
    from transformers import AutoTokenizer

    spec = get_task(task)
    if spec.family not in FAMILIES:
        raise Veco2Error(f"{spec.name} is a {spec.family} task without fine-tuning; use `veco2 evaluate --task {spec.name}`")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    hp = resolve_hyperparameters(spec, overrides)
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
        model, state = train_seed(spec, family, model_dir, seed_dir, seed, hp, train_features, dev, run_hash)
        scores = {}
        for lang, examples in tests.items():
            predictions = family.predict(model, examples)
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
            "n_train_features": len(train_features), "wall_seconds": round(time.time() - started, 2),
            "run_hash": run_hash, "provenance": provenance(run_config),
        }
        write_json(results_path, record)
        (seed_dir / "checkpoint.pt").unlink(missing_ok=True)
        results.append(record)
    return results

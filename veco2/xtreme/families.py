"""XTREME task families: how a task is featurised, predicted, scored and written out.

One class per engine family of the task files (``classification``: XNLI, PAWS-X; ``tagging``: UD-POS,
PAN-X; ``qa``: XQuAD, MLQA, TyDiQA-GoldP), selected by :data:`FAMILIES`.  Each turns examples of
:mod:`veco2.xtreme.data` into model features (``train_features``), predicts them with a model
(``predict``, batched by :func:`forward_batches`, sharded over the processes of an ``accelerate
launch`` and gathered), scores predictions (``score``) and writes them in the leaderboard's layout
(``prediction_text``).  The fine-tuning loop is :mod:`veco2.xtreme.finetune`.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, Veco2Error
from . import metrics
from .data import word_windows
from .registry import TaskSpec

if TYPE_CHECKING:  # finetune imports this module
    from .finetune import FinetuneSettings

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Batches: padding, devices, batched prediction over the processes
# ---------------------------------------------------------------------------------------------

def process_state():
    """accelerate's ``PartialState`` (device, process count and rank of this process), with
    ``ACCELERATE_USE_CPU=1`` honoured as ``Accelerator`` honours it: under ``torchrun`` on a machine
    without GPUs it is what makes the processes one gloo group instead of independent runs."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def pad_features(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
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


def model_inputs(features: list[dict], keys=("input_ids", "attention_mask")) -> list[dict]:
    return [{k: f[k] for k in keys} for f in features]


def _device_of(model) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=device.type == "cuda") for key, value in batch.items()}


@torch.no_grad()
def forward_batches(model, features: list[dict], batch_size: int, pad_id: int, outputs: Sequence[str]) -> list:
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
        batch = to_device(pad_features(model_inputs(chunk), pad_id), device)
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

    def __init__(self, task: TaskSpec, tokenizer, settings: FinetuneSettings):
        self.task, self.tokenizer, self.settings = task, tokenizer, settings
        self.label_index = {label: i for i, label in enumerate(task.labels)}

    def model_kwargs(self) -> dict:
        labels = list(self.task.labels)
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {l: i for i, l in enumerate(labels)}}

    def _encode(self, examples):
        return self.tokenizer([e["text_a"] for e in examples], [e["text_b"] for e in examples],
                              truncation=True, max_length=self.settings.max_seq_length)

    def train_features(self, examples: list[dict]) -> list[dict]:
        if any(e["label"] is None for e in examples):
            raise Veco2Error(f"{self.task.name}: the training data has no labels")
        enc = self._encode(examples)
        return [{"input_ids": ids, "attention_mask": mask, "labels": self.label_index[e["label"]]}
                for ids, mask, e in zip(enc["input_ids"], enc["attention_mask"], examples)]

    def predict(self, model, examples: list[dict]) -> list[str]:
        enc = self._encode(examples)
        features = [{"input_ids": i, "attention_mask": m} for i, m in zip(enc["input_ids"], enc["attention_mask"])]
        out = forward_batches(model, features, self.settings.eval_batch_size, self.tokenizer.pad_token_id, ["logits"])
        return [self.task.labels[int(np.argmax(logits))] for (logits,) in out]

    def score(self, examples: list[dict], predictions: list[str], lang: str) -> dict[str, float]:
        gold = [e["label"] for e in examples]
        if any(g is None for g in gold):
            raise Veco2Error(f"{self.task.name} {lang}: the test file has no labels (leaderboard placeholder); "
                             "score it with labelled data (e.g. from the hub via `veco2 prefetch`)")
        return {"accuracy": metrics.accuracy(predictions, gold)}

    def statistics(self, examples: list[dict], predictions: list[str], lang: str) -> metrics.ExampleStatistics:
        """Per-example rows of :meth:`score`'s headline (for the paired bootstrap)."""
        return metrics.accuracy_statistics(predictions, [e["label"] for e in examples])

    @staticmethod
    def prediction_text(predictions: list[str]) -> str:
        return "".join(f"{p}\n" for p in predictions)

    suffix = "tsv"


class Tagging:
    """Word-level sequence labelling (UD-POS, PAN-X); first-subword labelling, long sentences windowed."""

    auto_class = "AutoModelForTokenClassification"
    model_kwargs = Classification.model_kwargs
    suffix = "tsv"

    def __init__(self, task: TaskSpec, tokenizer, settings: FinetuneSettings):
        self.task, self.tokenizer, self.settings = task, tokenizer, settings
        self.label_index = {label: i for i, label in enumerate(task.labels)}

    @property
    def budget(self) -> int:
        """Subwords of a window: ``max_seq_length`` less the special tokens (the scoring methods need
        no tokenizer: the trivial baselines score with them)."""
        return self.settings.max_seq_length - self.tokenizer.num_special_tokens_to_add(pair=False)

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
                             truncation=True, max_length=self.settings.max_seq_length)
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
        out = forward_batches(model, features, self.settings.eval_batch_size, self.tokenizer.pad_token_id, ["logits"])
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

    def statistics(self, examples: list[dict], predictions: list[list[str]], lang: str) -> metrics.ExampleStatistics:
        """Per-sentence chunk counts of :meth:`score`'s headline F1 (for the paired bootstrap)."""
        gold = [e["tags"] for e in examples]
        return metrics.chunk_statistics(gold, predictions, name=score_key(self.task.metric))

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

    def __init__(self, task: TaskSpec, tokenizer, settings: FinetuneSettings):
        self.task, self.tokenizer, self.settings = task, tokenizer, settings
        self.skipped_answers = 0
        self.source = ""  # where the training questions come from, for the skip message (run_finetune sets it)

    def model_kwargs(self) -> dict:
        return {}

    def _windows(self, example: dict) -> Any:
        """Tokenise one question/context pair into windows ``doc_stride`` context tokens apart."""
        tok, settings = self.tokenizer, self.settings
        question = example["question"].lstrip()
        q = tok(question, add_special_tokens=False, return_offsets_mapping=True)
        if len(q["input_ids"]) > settings.max_query_length:  # XTREME truncates long questions
            question = question[:q["offset_mapping"][settings.max_query_length - 1][1]]
            q_len = settings.max_query_length
        else:
            q_len = len(q["input_ids"])
        room = settings.max_seq_length - q_len - tok.num_special_tokens_to_add(pair=True)
        if room < 1:
            raise ConfigError(f"max_seq_length {settings.max_seq_length} leaves no room for the context "
                              f"after a {q_len}-token question")
        # overlap between consecutive windows = room - doc_stride (so windows start doc_stride apart)
        overlap = max(0, min(room - 1, room - settings.doc_stride))
        return tok(question, example["context"], truncation="only_second", max_length=settings.max_seq_length,
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
        out = forward_batches(model, features, self.settings.eval_batch_size, self.tokenizer.pad_token_id,
                               ["start_logits", "end_logits"])
        for feature, (start_logits, end_logits) in zip(features, out):
            span = best_span(start_logits, end_logits, feature["context_mask"], self.settings.n_best_size,
                             self.settings.max_answer_length)
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

    def statistics(self, examples: list[dict], predictions: dict[str, str], lang: str) -> metrics.ExampleStatistics:
        """Per-question F1 and EM of :meth:`score` (for the paired bootstrap)."""
        references = {e["id"]: e["answers"]["text"] for e in examples}
        return metrics.qa_statistics(predictions, references, lang if self.task.metric == "mlqa_f1_em" else None)

    @staticmethod
    def prediction_text(predictions: dict[str, str]) -> str:
        return json.dumps(predictions, ensure_ascii=False, indent=1) + "\n"


FAMILIES = {"classification": Classification, "tagging": Tagging, "qa": QuestionAnswering}

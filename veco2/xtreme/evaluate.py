"""Retrieval tasks (BUCC 2018, Tatoeba) with the pre-trained encoder, WITHOUT fine-tuning.

Sentence vector (XTREME, Hu et al. 2020): the hidden states of one encoder layer, mean-pooled over
the non-pad tokens (``<s>`` and ``</s>`` included, as XTREME's ``extract_embeddings``), then
L2-normalised.  ``pooling="cls"`` takes the ``<s>`` vector instead (InfoXLM-style, an option).

Default layer: ``round(2/3 * num_hidden_layers)`` -- 8 of 12 for base models, as XTREME used; for
24-layer models this gives 16 (XTREME used 14 for XLM-R large, VECO 18: pass ``layer=14`` /
``--layer 14`` to match them).  Layer numbers follow ``output_hidden_states``: 0 = embeddings,
``num_hidden_layers`` = last layer.  The layer used is recorded in results.json.  ``layers="all"``
scores every layer 0..L from a single encoding pass and writes them under ``scores_by_layer``
(the reports plot retrieval accuracy by layer); the headline ``scores`` use the default/chosen layer.

Tatoeba (XTREME's direction, google-research/xtreme ``third_party/evaluate_retrieval.py``): each
English sentence retrieves its nearest non-English sentence by cosine (ties to the lowest index);
``accuracy`` is the percentage retrieving their line-aligned translation, and ``accuracy_xx_to_en``
the reverse direction (non-English queries), reported beside it
(:func:`veco2.xtreme.retrieval.tatoeba_evaluate`).  BUCC: margin-based mining (ratio margin, k = 4),
threshold chosen on the dev ("sample") gold and applied unchanged to test
(:func:`veco2.xtreme.retrieval.bucc_evaluate`).

Outputs: ``{out}/{task}/seed0/results.json`` and ``{out}/{task}/seed0/predictions/{task}/test-{lang}.tsv``
(Tatoeba: line i holds the 0-based line number of the non-English sentence that English line i
retrieved; BUCC: ``src_id \\t tgt_id`` of every mined test pair at the dev threshold).
``execution`` in results.json records the device and, on CUDA, the peak GPU memory.

Device: the model runs on accelerate's device (the GPU of this process when there is one, else the
CPU) in batches of ``batch_size`` sentences (``--batch-size``; the task file's 64 by default; the
vectors do not depend on it beyond float rounding), optionally under bf16/fp16
autocast (``--mixed-precision``; the pooled vectors are computed in float32 either way).  One process.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, Veco2Error
from ..fileio import write_json, write_text
from ..pretrained import resolve_pretrained
from ..provenance import config_hash, provenance
from ..weights import load_checked
from . import aggregate, retrieval
from .data import is_demo_root, load_split, resolve_root, available_languages
from .finetune import (MIXED_PRECISION, cap_length, execution_record, model_identity, process_state,
                       reset_peak_gpu_memory)
from .registry import get_task

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")


def default_layer(num_hidden_layers: int) -> int:
    """The layer at about 2/3 depth: 8 of 12 (XTREME's choice for base models)."""
    return round(2 * num_hidden_layers / 3)


@torch.no_grad()
def encode(sentences: Sequence[str], model, tokenizer, *, layers: Sequence[int], pooling: str = "mean",
           batch_size: int = 64, max_length: int = 512) -> dict[int, np.ndarray]:
    """L2-normalised sentence vectors ``{layer: [n, hidden]}`` for every layer in ``layers``.

    Mean pooling averages the hidden states of the non-pad tokens (the attention mask);
    ``cls`` takes position 0.  Sentences are encoded in length-sorted batches (less padding;
    the result does not depend on the order) and returned in input order.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r} unknown; use one of {', '.join(POOLINGS)}")
    was_training = model.training  # the trainer and the sweeps call this in the middle of training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out = {layer: np.zeros((len(sentences), model.config.hidden_size), dtype=np.float32) for layer in layers}
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = tokenizer([sentences[i] for i in index], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(device)
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        for layer in layers:
            states = hidden[layer].float()
            pooled = states[:, 0] if pooling == "cls" else (states * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[layer][index] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    model.train(was_training)
    return out


def autocast(device: torch.device, mixed_precision: str):
    """``torch.autocast`` for ``mixed_precision`` (``no`` | ``bf16`` | ``fp16``) on ``device``."""
    if mixed_precision in (None, False, "no"):
        return contextlib.nullcontext()
    if mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {mixed_precision!r}")
    if mixed_precision == "fp16" and device.type == "cpu":
        raise ConfigError("mixed_precision fp16 needs a GPU; use bf16 on a CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)


def _resolve_languages(task, languages, data_root, hub):
    if languages:
        return list(task.check_languages(languages))
    if not hub and is_demo_root(resolve_root(data_root)):
        found = available_languages(task, data_root)
        if not found:
            raise Veco2Error(f"{task.name}: the packaged demo data has no files for this task; pass --data-root DIR "
                             f"fetched with `veco2 prefetch --tasks {task.name} --out DIR`")
        return found
    return list(task.languages)


def run_evaluate(task: str, model_dir: str | Path, out_dir: str | Path, *, layer: int | None = None,
                 layers: str | Sequence[int] | None = None, pooling: str = "mean", data_root=None,
                 hub: bool = False, languages: Sequence[str] | None = None, batch_size: int | None = None,
                 max_length: int | None = None, k: int | None = None, mixed_precision: str = "no") -> dict:
    """Score a retrieval task (``tatoeba`` or ``bucc2018``) with the pre-trained encoder.

    Args:
        layer: hidden layer for the headline scores (default :func:`default_layer`).
        layers: ``"all"`` (or a list) also scores these layers into ``scores_by_layer``.
        pooling: ``mean`` (default, over non-pad tokens) or ``cls``.
        data_root / hub / languages: as :func:`veco2.xtreme.finetune.run_finetune` (BUCC needs the
            local corpus files; the hub holds only its gold pairs).
        model_dir: a local Hugging Face directory or a hub name (:func:`veco2.pretrained.resolve_pretrained`).
        batch_size, max_length, k: override the task file (k = BUCC margin neighbourhood); batch_size
            sentences per forward pass on the device.
        mixed_precision: ``no`` (default), ``bf16`` or ``fp16`` (GPU only) autocast of the encoder.

    Returns the results dict written to ``{out_dir}/{task}/seed0/results.json``.
    """
    from transformers import AutoModel, AutoTokenizer

    spec = get_task(task)
    if spec.family != "retrieval":
        raise Veco2Error(f"{spec.name} is fine-tuned; use `veco2 finetune --task {spec.name}`")
    hp = dict(spec.hyperparameters)
    hp.update({key: value for key, value in {"batch_size": batch_size, "max_seq_length": max_length, "k": k,
                                               "pooling": pooling}.items() if value is not None})
    if not isinstance(hp["batch_size"], int) or isinstance(hp["batch_size"], bool) or hp["batch_size"] < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {hp['batch_size']!r}")
    hp["mixed_precision"] = "no" if mixed_precision in (None, False) else mixed_precision
    device = process_state().device
    autocast(device, hp["mixed_precision"])  # checks the value before the model is loaded
    test_languages = _resolve_languages(spec, languages, data_root, hub)
    model_dir, out_dir = resolve_pretrained(model_dir), Path(out_dir)
    cap_length(hp, "max_seq_length", model_dir)
    started = time.time()
    reset_peak_gpu_memory(device)
    model = load_checked(AutoModel, model_dir, new_head_prefixes=("pooler.",)).to(device)  # fits, or one line
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    n_layers = model.config.num_hidden_layers
    layer = default_layer(n_layers) if layer is None else int(layer)
    if not 0 <= layer <= n_layers:
        raise ConfigError(f"layer {layer} out of range 0..{n_layers} (0 = embeddings)")
    if layers == "all":
        sweep = list(range(n_layers + 1))
    elif layers:
        sweep = sorted({int(x) for x in layers})
        if any(not 0 <= x <= n_layers for x in sweep):
            raise ConfigError(f"layers {sweep} out of range 0..{n_layers}")
    else:
        sweep = []
    all_layers = sorted(set(sweep) | {layer})
    hp["layer"] = layer

    def vectors(sentences):
        with autocast(device, hp["mixed_precision"]):
            return encode(sentences, model, tokenizer, layers=all_layers, pooling=hp["pooling"],
                          batch_size=hp["batch_size"], max_length=hp["max_seq_length"])

    by_layer: dict[int, dict[str, dict]] = {x: {} for x in all_layers}
    predictions: dict[str, str] = {}
    thresholds: dict[str, float] = {}
    for lang in test_languages:
        if spec.name == "tatoeba":
            data = load_split(spec, "test", lang, data_root=data_root, hub=hub)
            xx, en = vectors(data["src"]), vectors(data["tgt"])  # src = non-English side, tgt = English
            for x in all_layers:
                # "accuracy" = English queries over the non-English index (XTREME's direction);
                # "accuracy_xx_to_en" = the reverse, reported beside it.
                result = retrieval.tatoeba_evaluate(xx[x], en[x])
                by_layer[x][lang] = {key: result[key] for key in retrieval.TATOEBA_METRICS}
                if x == layer:  # line i: the non-English line retrieved for English line i
                    predictions[lang] = "".join(f"{int(i)}\n" for i in result["predictions"])
        elif spec.name == "bucc2018":
            dev = load_split(spec, "dev", lang, data_root=data_root, hub=hub)
            test = load_split(spec, "test", lang, data_root=data_root, hub=hub)
            for part, name in ((dev, "dev"), (test, "test")):
                if part["gold"] is None:
                    raise Veco2Error(f"bucc2018 {lang}: the {name} gold file ({lang}-en.{name}.gold) is missing")
            dv_src, dv_tgt, ts_src, ts_tgt = (vectors(dev["src"]), vectors(dev["tgt"]),
                                              vectors(test["src"]), vectors(test["tgt"]))
            for x in all_layers:
                result = retrieval.bucc_evaluate(dv_src[x], dv_tgt[x], dev["gold"], ts_src[x], ts_tgt[x], test["gold"],
                                                 dev_src_ids=dev["src_ids"], dev_tgt_ids=dev["tgt_ids"],
                                                 test_src_ids=test["src_ids"], test_tgt_ids=test["tgt_ids"],
                                                 k=hp["k"])
                by_layer[x][lang] = {key: result["test"][key] for key in ("f1", "precision", "recall")}
                if x == layer:
                    thresholds[lang] = result["threshold"]
            mined = retrieval.mine(ts_src[layer], ts_tgt[layer], k=hp["k"], src_ids=test["src_ids"],
                                   tgt_ids=test["tgt_ids"])
            predictions[lang] = "".join(f"{s}\t{t}\n" for s, t, score in mined if score >= thresholds[lang])
        else:
            raise Veco2Error(f"no retrieval evaluation for {spec.name}")

    seed_dir = out_dir / spec.name / "seed0"
    for lang, text in predictions.items():
        write_text(seed_dir / "predictions" / spec.name / f"test-{lang}.tsv", text)
    scores = by_layer[layer]
    summary = aggregate.task_score(scores, spec.name, languages=test_languages)
    root = None if hub else resolve_root(data_root)
    identity = model_identity(model_dir)
    run_config = {"task": spec.name, "version": spec.version, "hyperparameters": hp, "model": identity,
                  "languages": test_languages}
    record = {
        "task": spec.name, "version": spec.version, "languages": test_languages, "seed": aggregate.RETRIEVAL_SEED,
        "scores": scores, "task_score": summary["score"], "task_means": summary,
        "layer": layer, "num_hidden_layers": n_layers, "pooling": hp["pooling"],
        "scores_by_layer": {str(x): by_layer[x] for x in sweep} if sweep else None,
        "task_score_by_layer": {str(x): aggregate.task_score(by_layer[x], spec.name, languages=test_languages)["score"]
                                for x in sweep} if sweep else None,
        "bucc_thresholds": thresholds or None,
        "hyperparameters": hp, "model": identity,
        "data": {"source": "hub" if hub else "local", "root": None if root is None else str(root),
                 "demo": bool(root is not None and is_demo_root(root))},
        "execution": execution_record(device), "wall_seconds": round(time.time() - started, 2),
        "run_hash": config_hash(run_config), "provenance": provenance(run_config),
    }
    write_json(seed_dir / "results.json", record)
    return record

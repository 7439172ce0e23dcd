"""`veco2 evaluate`: the retrieval tasks (BUCC 2018, Tatoeba) with the pre-trained encoder, WITHOUT fine-tuning.

Sentence vector (XTREME, Hu et al. 2020): one layer's hidden states mean-pooled over the non-pad
tokens, L2-normalised; default layer ``round(2/3 * num_hidden_layers)``.  Tatoeba is scored in
XTREME's direction (google-research/xtreme ``third_party/evaluate_retrieval.py``), BUCC by
ratio-margin mining at the dev threshold.  Writes ``{out}/{task}/seed0/results.json`` and the
predictions.  Pooling, layers, outputs: ``docs/xtreme.md#the-retrieval-command``.
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
from ..fileio import write_text
from ..pretrained import resolve_pretrained
from ..provenance import config_hash, provenance
from ..weights import load_checked
from . import aggregate, retrieval
from .data import is_demo_root, load_split, resolve_root, run_languages
from .families import process_state
from .finetune import MIXED_PRECISION, cap_length, execution_record, model_identity, reset_peak_gpu_memory
from .registry import get_task
from .metrics import accuracy_statistics
from .results import RunResult, check_statistics, write_example_statistics

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
    test_languages = run_languages(spec, languages, data_root, hub)
    model_dir, out_dir = resolve_pretrained(model_dir), Path(out_dir)
    hp["max_seq_length"] = cap_length(hp["max_seq_length"], model_dir)
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
    statistics: dict = {}  # per-example rows of the reported layer (the report's paired bootstrap)
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
                    correct = np.asarray(result["predictions"]) == np.arange(len(result["predictions"]))
                    statistics[lang] = accuracy_statistics(correct.tolist(), [True] * len(correct))
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
            statistics[lang] = retrieval.bucc_statistics(mined, test["gold"], thresholds[lang],
                                                         test["src_ids"] or range(len(test["src"])))
        else:
            raise Veco2Error(f"no retrieval evaluation for {spec.name}")

    seed_dir = out_dir / spec.name / "seed0"
    for lang, text in predictions.items():
        write_text(seed_dir / "predictions" / spec.name / f"test-{lang}.tsv", text)
    scores = by_layer[layer]
    for lang, stats in statistics.items():
        check_statistics(stats, scores[lang], f"{spec.name} {lang}")
    summary = aggregate.task_score(scores, spec.name, languages=test_languages)
    root = None if hub else resolve_root(data_root)
    identity = model_identity(model_dir)
    run_config = {"task": spec.name, "version": spec.version, "hyperparameters": hp, "model": identity,
                  "languages": test_languages}
    result = RunResult(
        task=spec.name, version=spec.version, languages=test_languages, seed=aggregate.RETRIEVAL_SEED,
        scores=scores, task_score=summary["score"], task_means=summary,
        layer=layer, num_hidden_layers=n_layers, pooling=hp["pooling"],
        scores_by_layer={str(x): by_layer[x] for x in sweep} if sweep else None,
        task_score_by_layer={str(x): aggregate.task_score(by_layer[x], spec.name, languages=test_languages)["score"]
                             for x in sweep} if sweep else None,
        bucc_thresholds=thresholds or None,
        hyperparameters=hp, model=identity,
        data={"source": "hub" if hub else "local", "root": None if root is None else str(root),
              "demo": bool(root is not None and is_demo_root(root))},
        execution=execution_record(device), wall_seconds=round(time.time() - started, 2),
        run_hash=config_hash(run_config), provenance=provenance(run_config),
    )
    write_example_statistics(seed_dir, statistics)
    result.write(seed_dir / "results.json")
    return result.to_json()

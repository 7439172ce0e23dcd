"""The pre-training loop: data preparation, accelerate, rolling checkpoints, logging, evaluation.

``pretrain(cfg, out_dir)`` is what ``veco2 pretrain`` runs.  One process on CPU; under
``accelerate launch`` / ``torchrun`` the same code runs DDP or FSDP on GPUs (bf16 autocast with
``training.mixed_precision=bf16``); checkpoints are gathered full state (``veco2.checkpoint``).

Determinism and resume: everything random is seeded from (seed, step, micro-step, rank) —
batch composition (``veco2.data.batching.StepSampler``), masking (a per-step generator) and
dropout (``torch.manual_seed`` per step) — so a checkpoint needs only model, optimizer,
scheduler, step counters and the contrastive queue (which lives in the model's state).  On CPU a
run killed and resumed ends with the same weights, bit for bit, as an uninterrupted run.

Outputs in ``out_dir``::

    config.yaml         the resolved config
    metrics.jsonl       per-step losses, lr, grad norm, tokens/s, padding share (MFU on GPU)
    tensorboard/        accelerate's TensorBoard tracker
    checkpoints/        rolling checkpoints (or training.checkpoint_dir), resumed automatically
    model/              the final encoder + MLM head + tokenizer (Hugging Face format)
    summary.json        final losses, held-out retrieval accuracy, throughput, provenance
    DONE                written last
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import checkpoints, export_encoder, gather_model_state, load_checkpoint, save_checkpoint
from .config import Config, save_config, weights_hash
from .data.batching import SpecialTokens, StepBatches, StepSampler, sequence_lengths, step_seed
from .data.corpus import Corpus
from .data.sources import CorpusSources
from .data.shards import PretrainingShards, build_shards
from .data.tokenizer import load_tokenizer, train_unigram_tokenizer
from .errors import Veco2Error
from .fileio import append_jsonl, atomic_write, fault_point, read_json, read_jsonl, try_lock, write_json, write_text
from .model import Veco2ForPretraining, build_encoder, count_parameters, flops_per_token
from .objectives import IGNORE_INDEX, combine_losses
from .pretrained import hub_origin, resolve_pretrained
from .probes import word_translation_probe
from .provenance import config_hash, provenance
from .xtreme.retrieval_run import default_layer

log = logging.getLogger(__name__)

# Dense (no sparsity) bf16 peak FLOP/s by GPU name, for MFU: NVIDIA's H100 SXM and H200 datasheets
# (1,979 TFLOP/s "with sparsity", half of it dense) and the A100 datasheet (312 TFLOP/s).
PEAK_FLOPS = {"H100": 989.5e12, "H200": 989.5e12, "A100": 312e12}


# ----------------------------------------------------------------------------------------------
# Data preparation (shared by `veco2 data prepare` and `veco2 pretrain`)


def prepare_data(cfg: Config, out_dir: str | Path) -> tuple[object, PretrainingShards]:
    """Train or load the tokenizer and build (or reuse) the pre-tokenized shards of the corpus
    directory and the sources (``data.corpus``, ``data.sources``)."""
    out_dir = Path(out_dir)
    sources = CorpusSources(cfg.data)
    languages = sources.languages(cfg.data.languages)
    if cfg.data.tokenizer == "train":
        tokenizer_dir = out_dir / "tokenizer"
        if not (tokenizer_dir / "tokenizer.json").exists():
            texts = [s for lang in ["en", *languages] for s in sources.training_text(lang, cfg.data)]
            train_unigram_tokenizer(texts, vocab_size=cfg.data.vocab_size, out_dir=tokenizer_dir)
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        tokenizer = load_tokenizer(cfg.data.tokenizer)
    shard_dir = Path(cfg.data.shard_dir) if cfg.data.shard_dir else out_dir / "shards"
    if not (shard_dir / "manifest.json").exists():
        build_shards(sources, tokenizer, languages, cfg.data.max_length, shard_dir, cfg.data)
    shards = PretrainingShards.open(shard_dir)
    cut = {lang: m["truncated"] for lang, m in shards.manifest.get("mono", {}).items() if m.get("truncated")}
    if cut:  # the data card (manifest.json) holds the counts; say so in the run's log too
        log.warning("%s: monolingual sentences cut to data.max_length=%d tokens: %s", shard_dir / "manifest.json",
                    shards.manifest.get("max_length"), ", ".join(f"{lang} {n}" for lang, n in cut.items()))
    if shards.manifest.get("tokenizer_vocab_size") != len(tokenizer):
        raise Veco2Error(f"{shard_dir}: shards were built with a tokenizer of {shards.manifest.get('tokenizer_vocab_size')} "
                         f"pieces, this tokenizer has {len(tokenizer)}; delete the shards to rebuild them")
    return tokenizer, shards


# ----------------------------------------------------------------------------------------------
# Checkpoints


def resume_hash(cfg: Config) -> str:
    """Hash of the settings a checkpoint must share with the run that resumes it (the settings that
    decide the weights; :func:`veco2.config.weights_hash`)."""
    return weights_hash(cfg)


def _rewind_metrics(path: Path, step: int) -> None:
    """Keep only the metrics records of steps ``<= step`` (the step a run resumes from).

    A killed run has logged steps after its last checkpoint (and may have left half a line); the
    resumed run logs them again, so without this they would appear twice.  Rewritten atomically.
    """
    if not path.exists():
        return
    records = read_jsonl(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) == len(records) and path.read_bytes().endswith(b"\n") or not path.stat().st_size:
        return
    log.info("%s: dropping %d records logged after step %d by the interrupted run", path, len(records) - len(kept), step)
    with atomic_write(path) as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)


# ----------------------------------------------------------------------------------------------
# Evaluation


def heldout_retrieval(encoder, tokenizer, corpus: Corpus | CorpusSources, languages: list[str], layer: int,
                      pooling: str, pairs_per_language: int) -> dict[str, float]:
    """Tatoeba-style accuracy (percent, both directions averaged) on held-out dev pairs per language
    (``corpus.parallel(lang, "dev")``: the corpus's dev split, or with ``data.sources`` the
    ``heldout_split`` of a parallel hub source), with the sentence vectors of XTREME's retrieval tasks."""
    from .xtreme.retrieval_run import encode
    from .xtreme.retrieval import tatoeba_accuracy

    scores = {}
    for lang in languages:
        pairs = corpus.parallel(lang, "dev")[:pairs_per_language]
        if len(pairs) < 2:
            continue
        en = encode([p[0] for p in pairs], encoder, tokenizer, layers=[layer], pooling=pooling, max_length=128)[layer]
        xx = encode([p[1] for p in pairs], encoder, tokenizer, layers=[layer], pooling=pooling, max_length=128)[layer]
        scores[lang] = (tatoeba_accuracy(xx, en) + tatoeba_accuracy(en, xx)) / 2
    if scores:
        scores["mean"] = sum(scores.values()) / len(scores)
    return scores


# ----------------------------------------------------------------------------------------------
# Training


@contextlib.contextmanager
def exclusive_directory(out_dir: Path):
    """Refuse a second run on the same output directory (an flock, released when the process dies)."""
    handle = try_lock(out_dir / ".lock", block=False)
    if handle is None:
        raise Veco2Error(f"{out_dir}: another veco2 run is using this output directory (lock {out_dir / '.lock'})")
    try:
        yield
    finally:
        handle.close()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def log_contrastive_negatives(model: Veco2ForPretraining, local_pairs: int, world_size: int) -> dict | None:
    """Log (and return) how many negatives each anchor of the sequence term sees, per process and in all."""
    if model.seq is None:
        return None
    counts = {"pairs_per_process": local_pairs, "processes": world_size, "mode": model.seq.negatives,
              **model.seq.negatives_per_anchor(local_pairs, world_size)}
    log.info("sequence contrast (negatives=%s): %d pairs per micro-batch and process, %d process(es): %d negatives "
             "per anchor from this process, %d in all%s", counts["mode"], local_pairs, world_size,
             counts["per_process"], counts["global"], " (once the queue is full)" if counts["mode"] == "queue" else "")
    return counts


def pretrain(cfg: Config, out_dir: str | Path, *, stop_after: int | None = None,
             on_log: Callable[[dict, Veco2ForPretraining], None] | None = None) -> dict:
    """Run (or resume) pre-training; returns the summary.

    ``stop_after`` ends the call early after that many optimizer steps of this invocation (tests
    simulate interruptions with it).  ``on_log(record, model)`` is called on the main process with
    every metrics record and the (unwrapped) model being trained; the sweeps evaluate intermediate
    values and prune through it (an exception it raises propagates after the record is written).
    It may evaluate the model: dropout is re-seeded every step, so this does not change training.
    """
    from accelerate import Accelerator, DistributedType
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    out_dir = Path(out_dir)
    t = cfg.training
    with exclusive_directory(out_dir):
        accelerator = Accelerator(
            mixed_precision=t.mixed_precision,
            log_with="tensorboard" if t.tensorboard else None,
            project_dir=str(out_dir / "tensorboard"),
        )
        if (out_dir / "DONE").exists():
            log.info("%s: already complete", out_dir)
            return read_json(out_dir / "summary.json")
        if accelerator.is_main_process:
            save_config(cfg, out_dir / "config.yaml")
            tokenizer, shards = prepare_data(cfg, out_dir)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            tokenizer, shards = prepare_data(cfg, out_dir)
        special = SpecialTokens.of(tokenizer)

        torch.manual_seed(t.seed)
        # The starting weights are resolved once, here: the hub is asked before training, not after it.
        init_origin = _init_origin(cfg.model.init_from)
        encoder = build_encoder(cfg.model, vocab_size=len(tokenizer), pad_token_id=special.pad,
                                init_source=init_origin and init_origin["path"])
        model = Veco2ForPretraining(encoder, cfg.objectives, sparse_mlm_head=cfg.model.sparse_mlm_head,
                                    retrieval_layer=cfg.evaluation.retrieval_layer)
        fused = t.fused_adamw and accelerator.device.type == "cuda"
        optimizer = torch.optim.AdamW(_param_groups(model, t.weight_decay), lr=t.lr, betas=tuple(t.betas),
                                      **({"fused": True} if fused else {}))
        scheduler = get_linear_schedule_with_warmup(optimizer, t.warmup_steps, t.max_steps)

        checkpoint_root = Path(t.checkpoint_dir) if t.checkpoint_dir else out_dir / "checkpoints"
        state = {"step": 0, "tokens": 0, "skipped_nonfinite": 0, "config_hash": resume_hash(cfg)}
        model, optimizer = accelerator.prepare(model, optimizer)
        core: Veco2ForPretraining = accelerator.unwrap_model(model)
        existing = checkpoints(checkpoint_root)
        if existing:  # after prepare: FSDP has sharded the parameters the checkpoint fills
            resumed = load_checkpoint(existing[-1], model, optimizer, scheduler)
            if resumed.get("config_hash") != state["config_hash"]:
                raise Veco2Error(f"{existing[-1]}: checkpoint of a run with another config (hash "
                                 f"{resumed.get('config_hash')}, this run {state['config_hash']}); delete "
                                 f"{checkpoint_root} to start over or set training.checkpoint_dir")
            state = resumed
            log.info("resumed from %s (step %d)", existing[-1], state["step"])
        if accelerator.is_main_process:
            _rewind_metrics(out_dir / "metrics.jsonl", state["step"])
        forward = torch.compile(model) if t.compile else model  # checkpoints use the uncompiled module's names
        sampler = StepSampler(shards.num_mono, shards.num_bi, shards.mono_lengths(), shards.bi_lengths(),
                              t.batch_size, cfg.data.bilingual_ratio, t.seed, cfg.data.bucket_by_length,
                              cfg.data.bucket_window, rank=accelerator.process_index, world=accelerator.num_processes,
                              mono_languages=shards.languages("mono"), bi_languages=shards.languages("bi"),
                              language_alpha=cfg.data.language_sampling_alpha)
        negatives = log_contrastive_negatives(core, sampler.n_bi, accelerator.num_processes)
        weights = cfg.objectives.weights()
        if t.tensorboard:
            accelerator.init_trackers("pretrain", config={"name": cfg.name})
        peak = t.peak_flops
        if peak is None and accelerator.device.type == "cuda":
            name = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        n_params = count_parameters(core.encoder)

        progress = tqdm(total=t.max_steps, initial=state["step"], disable=not accelerator.is_main_process,
                        desc=f"pretrain {cfg.name}")
        model.train()
        window = {"tokens": 0, "positions": 0, "masked": 0, "span_x_tokens": 0.0, "seconds": 0.0, "cpu_seconds": 0.0,
                  "steps": 0}
        steps_this_run = 0
        # Batches are built ahead by data.num_workers background processes (0: in this process),
        # identical either way (each is a pure function of its step); pinned for the GPU copy.
        on_gpu = accelerator.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            StepBatches(shards, sampler, cfg, special, state["step"] * t.grad_accum, t.max_steps * t.grad_accum,
                        rank=accelerator.process_index),
            batch_size=None, num_workers=cfg.data.num_workers, pin_memory=on_gpu,
            prefetch_factor=4 if cfg.data.num_workers else None)
        batches = iter(loader)
        while state["step"] < t.max_steps and (t.max_tokens is None or state["tokens"] < t.max_tokens):
            step = state["step"]
            started, cpu_started = time.perf_counter(), time.process_time()
            terms_sum: dict[str, float] = {}
            nonfinite = None
            step_tokens = 0
            torch.manual_seed(step_seed(t.seed, step, accelerator.process_index))  # dropout
            for micro in range(t.grad_accum):
                batch = next(batches)
                lengths = sequence_lengths(batch).double()
                window["span_x_tokens"] += float((lengths ** 2).sum())  # attention FLOPs: Σ n² over sequences
                batch = batch.to(accelerator.device, non_blocking=on_gpu)
                step_tokens += int(batch.attention_mask.sum())
                window["positions"] += batch.attention_mask.numel()
                window["masked"] += int((batch.labels != IGNORE_INDEX).sum())
                sync = contextlib.nullcontext() if micro == t.grad_accum - 1 else accelerator.no_sync(model)
                with sync, accelerator.autocast():
                    losses = forward(batch)
                    total, values = combine_losses(losses, weights)
                    for name in losses:
                        if not math.isfinite(values[name]):
                            nonfinite = nonfinite or (name, values[name])
                        terms_sum[name] = terms_sum.get(name, 0.0) + values[name] / t.grad_accum
                    if nonfinite is None:
                        accelerator.backward(total / t.grad_accum)
            grad_norm = float("nan")
            if nonfinite is None:
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), t.clip_grad_norm))
                if not math.isfinite(grad_norm):
                    nonfinite = ("gradient", grad_norm)
            if nonfinite is not None:
                optimizer.zero_grad(set_to_none=True)
                state["skipped_nonfinite"] += 1
                message = f"step {step}: {nonfinite[0]} is {nonfinite[1]}"
                if state["skipped_nonfinite"] > t.max_nonfinite_skips:
                    raise Veco2Error(f"{message}; stopping after {state['skipped_nonfinite']} non-finite steps "
                                     f"(training.max_nonfinite_skips={t.max_nonfinite_skips}); the last good checkpoint "
                                     f"is kept in {checkpoint_root}")
                log.warning("%s; step skipped (%d of at most %d)", message, state["skipped_nonfinite"],
                            t.max_nonfinite_skips)
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                core.update_momentum(cfg.objectives.seq.momentum)
            scheduler.step()
            state["step"] += 1
            state["tokens"] += step_tokens
            window["tokens"] += step_tokens
            window["seconds"] += time.perf_counter() - started
            # CPU time of this process (all its threads): unlike wall time, a job that shares its cores
            # with another is not charged for the time it waits, so costs compare across schedules.
            window["cpu_seconds"] += time.process_time() - cpu_started
            window["steps"] += 1
            steps_this_run += 1
            progress.update(1)

            if state["step"] % t.log_every == 0 or state["step"] == t.max_steps:
                tokens_per_s = window["tokens"] / window["seconds"] if window["seconds"] else 0.0
                record = {"step": state["step"], **{f"loss_{k}": v for k, v in terms_sum.items()},
                          "loss": sum(weights[k] * v for k, v in terms_sum.items()),
                          "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                          "tokens_per_s": tokens_per_s * accelerator.num_processes,
                          "steps_per_s": window["steps"] / window["seconds"] if window["seconds"] else 0.0,
                          "cpu_seconds_per_token": window["cpu_seconds"] / max(window["tokens"], 1),
                          "padding_share": 1 - window["tokens"] / max(window["positions"], 1),
                          "tokens_seen": state["tokens"] * accelerator.num_processes}
                if peak:
                    span = window["span_x_tokens"] / max(window["tokens"], 1)  # mean attention span of a token
                    fpt = flops_per_token(core.encoder, span, window["masked"] / max(window["tokens"], 1))
                    record["mfu"] = fpt * tokens_per_s / peak
                if accelerator.is_main_process:
                    append_jsonl(out_dir / "metrics.jsonl", record)
                    progress.set_postfix(loss=f"{record['loss']:.3f}")
                    if on_log is not None:
                        on_log(record, core)
                if t.tensorboard:
                    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state["step"])
                window = {"tokens": 0, "positions": 0, "masked": 0, "span_x_tokens": 0.0, "seconds": 0.0,
                          "cpu_seconds": 0.0, "steps": 0}
            if state["step"] % t.checkpoint_every == 0 and state["step"] < t.max_steps:
                save_checkpoint(checkpoint_root, state["step"], model, optimizer, scheduler, state, t.keep_checkpoints)
                accelerator.wait_for_everyone()
            fault_point(f"pretrain-step:{state['step']}")  # crash tests: killed between steps
            if stop_after is not None and steps_this_run >= stop_after:
                progress.close()
                return {"stopped_at": state["step"]}
        progress.close()
        if t.tensorboard:
            accelerator.end_training()

        summary: dict = {}
        sharded = accelerator.distributed_type == DistributedType.FSDP
        state_dict = gather_model_state(model)  # collective: FSDP gathers the shards onto the main process
        if accelerator.is_main_process:
            encoder_state = {k.removeprefix("encoder."): v for k, v in state_dict.items() if k.startswith("encoder.")}
            summary = finish(cfg, out_dir, core, encoder_state, tokenizer, shards, state, n_params, sharded=sharded,
                             negatives=negatives, init_origin=init_origin)
        accelerator.wait_for_everyone()
        return summary


def finish(cfg: Config, out_dir: Path, core: Veco2ForPretraining, encoder_state: dict, tokenizer, shards, state: dict,
           n_params: int, *, sharded: bool = False, negatives: dict | None = None,
           init_origin: dict | None = None) -> dict:
    """Save the final model (from its gathered ``encoder_state``), run the held-out retrieval check,
    write summary.json and DONE.  On the main process only; ``sharded``: ``core`` holds FSDP shards,
    so the check runs on the saved model instead."""
    from transformers import AutoModel

    model_dir = out_dir / "model"
    export_encoder(core.encoder, encoder_state, tokenizer, model_dir)
    fault_point("pretrain-finish")  # crash tests: final model written, summary and DONE not yet

    layers = core.encoder.config.num_hidden_layers
    layer = cfg.evaluation.retrieval_layer if cfg.evaluation.retrieval_layer is not None else default_layer(layers)
    languages = [lang for lang in shards.manifest["languages"] if lang != "en"]
    encoder = AutoModel.from_pretrained(model_dir) if sharded else core.encoder.roberta
    corpus = CorpusSources(cfg.data)
    retrieval = heldout_retrieval(encoder, tokenizer, corpus, languages, layer,
                                  cfg.evaluation.retrieval_pooling, cfg.evaluation.heldout_pairs)
    probe = None
    if cfg.evaluation.word_translation_words:
        probe = word_translation_probe(encoder, tokenizer, corpus, shards, languages, list(range(layers + 1)),
                                       cfg.evaluation.heldout_pairs, cfg.data.max_length,
                                       cfg.evaluation.word_translation_words)
        probe["layer"] = layer
    metrics = read_jsonl(out_dir / "metrics.jsonl") if (out_dir / "metrics.jsonl").exists() else []
    first, last = (metrics[0], metrics[-1]) if metrics else ({}, {})
    summary = {
        "name": cfg.name,
        "steps": state["step"],
        "tokens": state["tokens"],
        "skipped_nonfinite": state["skipped_nonfinite"],
        "parameters": n_params,
        "first_losses": {k: v for k, v in first.items() if k.startswith("loss")},
        "final_losses": {k: v for k, v in last.items() if k.startswith("loss")},
        "median_tokens_per_s": statistics.median([m["tokens_per_s"] for m in metrics[1:]] or [0.0]),
        "median_steps_per_s": statistics.median([m["steps_per_s"] for m in metrics[1:]] or [0.0]),
        "median_cpu_seconds_per_token": statistics.median([m["cpu_seconds_per_token"] for m in metrics[1:]
                                                           if "cpu_seconds_per_token" in m] or [0.0]),
        "torch_threads": torch.get_num_threads(),
        "sequence_negatives": negatives,
        "retrieval": {"layer": layer, "pooling": cfg.evaluation.retrieval_pooling, "accuracy": retrieval},
        "word_translation": probe,
        "shards": {"languages": shards.manifest["languages"], "mono": shards.num_mono, "bilingual": shards.num_bi},
        "init_from": init_origin,
        "config": cfg.to_dict(),
        "provenance": provenance(cfg.to_dict()),
    }
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "DONE", f"{summary['provenance']['git_commit']}\n")
    return summary


def _init_origin(init_from: str | None) -> dict | None:
    """Which weights pre-training started from: the directory read and, for a hub model, its name and
    commit (a hub name alone does not pin the weights)."""
    if not init_from:
        return None
    source = resolve_pretrained(init_from)
    origin = hub_origin(source) or {"name": None, "revision": None}
    return {"path": str(source), **origin}

"""``veco2 bench``: how much hardware time veco2's pre-training step wastes, measured.

Sub-commands (each prints a table and writes one JSON file with provenance):

``pretrain``       veco2's training step against a plain Hugging Face implementation of the same
                   objective variant (the *baseline*, below), interleaved in one process.
``variants``       the cost of the contrastive objectives: veco2's step for several objective
                   variants (default mlm and mlm_seq_tok with its encoding options), interleaved.
``optimizations``  each optimisation switched off on its own (packing, sparse head, SDPA, ...).
``retrieval``      BUCC-scale margin mining of n × n random sentence vectors (time, peak RSS).
``mining``         runs ``benchmarks/mining_vs_tokenization.py`` (synonym mining vs tokenization).

**How a comparison is timed.**  Every *system* (a model + optimizer + batch recipe) is built
once, warmed up (``--warmup`` steps, not timed), then the systems take turns: in each of
``--repeats`` rounds each system runs ``--steps`` training steps (the order of the systems is
reversed every other round, so slow drifts of a shared machine hit all of them alike).  A
step is the whole thing: building the batch from the memory-mapped shards, host→device copy,
forward, backward, gradient clipping and the optimizer step (on GPU it ends with a
synchronisation).  Reported per system: the median over rounds of

* ``tokens_per_s``: non-pad tokens *of the data* per second: the tokens of the main (MLM/TLM)
  pass.  Tokens that a system encodes a second time (a clean pass for the contrastive terms)
  are not counted again;
* ``padding_share``: padded positions / all positions of every encoder pass of the step;
* ``mfu`` (GPU): ``flops_per_token × tokens_per_s / peak`` (PaLM's model FLOPs utilisation,
  arXiv 2204.02311 appendix B; ``veco2.model.flops_per_token``), the attention
  term with the mean attention span of a token (its own sequence, also when packed);
* ``peak_memory_mib``: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak RSS of a
  separate child process that builds the system alone and runs ``--steps`` steps (one process
  cannot separate the systems' CPU memory).

The ratio veco2 / baseline is computed per round and its median reported (ratios within one
run are what count on a shared machine).

Every system draws the same instances at every step (the sampler without length bucketing), so
the per-round ratios compare the same work; only ``bucketing_not_packing`` of ``optimizations``
sees other (length-sorted) batches.

**The baseline** is the objective written the plain way: ``XLMRobertaForMaskedLM(labels=...)``
(the full-vocabulary head at every position), eager attention, float32, batches padded to their
longest sequence without length bucketing or packing, plain TLM rows (every layer joint, one run
of positions), both contrastive terms on the sides encoded by
two extra forward passes (one per side, unmasked, each padded to its longest sentence), as the
default objective reads them, ``torch.optim.AdamW`` with its default (non-fused)
implementation.  The loss terms are veco2's own ``SequenceContrastive`` / ``TokenContrastive``
modules, so the objective math is the same; only the engineering differs.  Batches draw the same
number of monolingual and bilingual instances per step from the same shards.

**Data.**  ``--data demo`` pre-tokenizes the embedded demo corpus (cached under ``--cache``);
the demo corpus supports a tokenizer of ``--tokenizer-vocab`` (8000) pieces, and the model's
embedding matrix and MLM output layer are sized ``--vocab-size`` (32000 by default): the compute
is that of a 32k-vocabulary model, the rows past the tokenizer's pieces are simply never
predicted.  ``--data synthetic`` draws random token ids with lengths uniform in
``[--min-len, --seq-len]`` (and random synonym spans), for controlled sequence lengths (GPU
runs at 128 / 512 tokens); it needs no corpus and no tokenizer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .config import Config, load_config
from .data.batching import PretrainingBatch, SpecialTokens, StepSampler, collate, needs_clean_pass
from .data.corpus import Corpus
from .errors import Veco2Error
from .fileio import write_json
from .model import Veco2ForPretraining, build_encoder, flops_per_token
from .provenance import provenance, sha256_file
from .trainer import PEAK_FLOPS

# A benchmark runs from a veco2 checkout: variants are ablation files, results land in the
# checkout's benchmarks/results/ (paths relative to the working directory, not to the package, so
# that an installed veco2 reads the user's files).
ABLATIONS = Path("ablations")
RESULTS = Path("benchmarks") / "results"

# Options of veco2's system unless a spec overrides them (they are also the config defaults; listed
# so that a benchmark records them explicitly).  Packing without length bucketing leaves ~1.5% padding on the demo corpus (bucketing + packing: 4-11%, since rows of
# similar length pack badly), and it keeps every system on the same batches.
VECO2_DEFAULTS = ["data.packing=true", "data.bucket_by_length=false", "model.sparse_mlm_head=true",
                  "model.attn_implementation=sdpa"]


# ----------------------------------------------------------------------------------------------
# Data: the demo corpus (pre-tokenized, cached) or synthetic shards


@dataclass
class SyntheticShards:
    """Random token ids with the :class:`veco2.data.shards.PretrainingShards` read interface."""

    mono_tokens: list[np.ndarray]
    src_tokens: list[np.ndarray]
    tgt_tokens: list[np.ndarray]
    spans: list[np.ndarray]
    manifest: dict = field(default_factory=lambda: {"synthetic": True})

    @classmethod
    def make(cls, count: int, min_len: int, max_len: int, vocab: int, seed: int = 0) -> "SyntheticShards":
        rng = np.random.default_rng(seed)

        def sentence(lo: int, hi: int) -> np.ndarray:
            return rng.integers(5, vocab, size=int(rng.integers(lo, hi + 1))).astype(np.int32)

        mono = [sentence(min_len - 2, max_len - 2) for _ in range(count)]
        # A TLM row of one pair is about as long as a monolingual row: each side half of it.
        src = [sentence(max(1, (min_len - 4) // 2), (max_len - 4) // 2) for _ in range(count)]
        tgt = [sentence(max(1, (min_len - 4) // 2), (max_len - 4) // 2) for _ in range(count)]
        spans = []
        for x, y in zip(src, tgt):
            rows = []
            for _ in range(int(rng.integers(0, 4))):
                s0, t0 = int(rng.integers(0, len(x))), int(rng.integers(0, len(y)))
                rows.append((s0, min(s0 + 2, len(x)), t0, min(t0 + 2, len(y))))
            spans.append(np.asarray(rows, dtype=np.int64).reshape(-1, 4))
        return cls(mono, src, tgt, spans)

    num_mono = property(lambda self: len(self.mono_tokens))
    num_bi = property(lambda self: len(self.src_tokens))

    def mono(self, i: int) -> np.ndarray:
        return self.mono_tokens[i]

    def bi(self, i: int):
        return self.src_tokens[i], self.tgt_tokens[i], self.spans[i]

    def mono_lengths(self) -> np.ndarray:
        return np.asarray([len(t) for t in self.mono_tokens])

    def bi_lengths(self) -> np.ndarray:
        return np.asarray([len(x) + len(y) for x, y in zip(self.src_tokens, self.tgt_tokens)])


def load_data(args) -> tuple[object, SpecialTokens]:
    """Shards and special tokens for ``--data demo`` or ``--data synthetic``."""
    if args.data == "synthetic":
        special = SpecialTokens(bos=0, eos=2, pad=1, mask=4, vocab_size=args.vocab_size)
        shards = SyntheticShards.make(args.synthetic_count, args.min_len or max(4, args.seq_len // 2),
                                      args.seq_len, args.vocab_size)
        return shards, special
    from .trainer import prepare_data

    cfg = load_config(overrides=[f"data.corpus={args.data}", f"data.vocab_size={args.tokenizer_vocab}",
                                 f"data.max_length={args.seq_len}"])
    languages = "-".join(cfg.data.languages) or "all"
    corpus = Corpus(cfg.data.corpus).root
    digest = hashlib.sha256()  # the cache key follows the corpus content: a rebuilt corpus is re-tokenized
    for path in sorted(p for part in ("parallel", "mono", "dict") for p in (corpus / part).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(corpus)}\0{sha256_file(path)}\n".encode())
    cache = Path(args.cache) / (f"{Path(args.data).name}-v{args.tokenizer_vocab}-len{args.seq_len}-{languages}-"
                                f"{digest.hexdigest()[:12]}")
    tokenizer, shards = prepare_data(cfg, cache)
    return shards, SpecialTokens.of(tokenizer)


# ----------------------------------------------------------------------------------------------
# Systems


@dataclass
class SystemSpec:
    """``label``: a name; ``kind``: "veco2" or "baseline"; ``variant``: an ablations/ file; ``overrides``."""

    label: str
    kind: str
    variant: str
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str, default_variant: str) -> "SystemSpec":
        """``LABEL=KIND[:VARIANT][:key=value,key=value]``, e.g. ``joint=veco2:mlm_seq_tok:objectives.seq.encoding=joint``."""
        label, _, rest = text.partition("=")
        if not rest:
            label, rest = text, text
        parts = rest.split(":")
        kind = parts[0]
        if kind not in ("veco2", "baseline"):
            raise Veco2Error(f"--system {text!r}: kind must be veco2 or baseline, got {kind!r}")
        variant = parts[1] if len(parts) > 1 and parts[1] else default_variant
        overrides = [o for o in (parts[2].split(",") if len(parts) > 2 else []) if o]
        return cls(label, kind, variant, overrides)


def _apply_overrides(variant: str, overrides: list[str]) -> Config:
    path = Path(variant) if variant.endswith(".yaml") else ABLATIONS / f"{variant}.yaml"
    if not path.exists():
        raise Veco2Error(f"objective variant {variant!r}: {path} not found (run from the veco2 checkout, or "
                         "pass the ablation file's path)")
    cfg = load_config(path, overrides=overrides)
    return cfg


class System:
    """One way of running training steps, with the batch recipe, model and optimizer it needs."""

    def __init__(self, spec: SystemSpec, args, shards, special: SpecialTokens, device: torch.device):
        self.spec, self.device, self.shards, self.special = spec, device, shards, special
        base = [f"training.batch_size={args.batch_size}", f"model.size={args.size}",
                f"data.max_length={args.seq_len}", "model.dropout=0.1"]
        if spec.kind == "baseline":
            base += ["data.bucket_by_length=false", "data.packing=false", "model.sparse_mlm_head=false",
                     "model.attn_implementation=eager",  # and HF's plain TLM with one extra pass per side:
                     "objectives.mlm.tlm_cross_layers=null", "objectives.mlm.tlm_reset_positions=false",
                     "objectives.seq.encoding=separate"]
        else:
            base += VECO2_DEFAULTS
        self.cfg = _apply_overrides(spec.variant, base + args.override + spec.overrides)
        cfg = self.cfg
        on_gpu = device.type == "cuda"
        self.bf16 = spec.kind == "veco2" and on_gpu and args.precision in ("auto", "bf16")
        torch.manual_seed(0)
        self.encoder = build_encoder(cfg.model, vocab_size=args.vocab_size, pad_token_id=special.pad)
        self.model = Veco2ForPretraining(self.encoder, cfg.objectives, sparse_mlm_head=cfg.model.sparse_mlm_head)
        self.model.to(device).train()
        from .trainer import _param_groups

        fused = spec.kind == "veco2" and on_gpu and not args.no_fused
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, cfg.training.weight_decay), lr=1e-4,
                                           **({"fused": True} if fused else {}))
        self.forward = self.model
        if spec.kind == "veco2" and args.compile:
            self.forward = torch.compile(self.model, dynamic=True)
        self.sampler = StepSampler(shards.num_mono, shards.num_bi, shards.mono_lengths(), shards.bi_lengths(),
                                   cfg.training.batch_size, cfg.data.bilingual_ratio, 0, cfg.data.bucket_by_length,
                                   cfg.data.bucket_window)
        self.weights = cfg.objectives.weights()
        self.step_index = 0
        self.options = {"packing": cfg.data.packing,
                        "bucket_by_length": cfg.data.bucket_by_length, "sparse_mlm_head": cfg.model.sparse_mlm_head,
                        "attn_implementation": cfg.model.attn_implementation, "bf16_autocast": self.bf16,
                        "fused_adamw": fused, "compile": spec.kind == "veco2" and args.compile,
                        "seq_encoding": cfg.objectives.seq.encoding, "mlm_bilingual": cfg.objectives.mlm.bilingual,
                        "tok_encoding": cfg.objectives.tok.encoding, "clean_pass": needs_clean_pass(cfg)}

    # -- one step ---------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """One training step; returns its token accounting."""
        mono_idx, bi_idx = self.sampler.indices(self.step_index)
        batch = collate(self.shards, mono_idx, bi_idx, self.cfg, self.special,
                        torch.Generator().manual_seed(self.step_index))
        self.step_index += 1
        stats = batch_statistics(batch)
        pin = self.device.type == "cuda"
        batch = (batch.pin_memory() if pin else batch).to(self.device, non_blocking=pin)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext())
        with autocast:
            losses = self.forward(batch) if self.spec.kind == "veco2" else self.baseline_losses(batch)
            total = sum(self.weights[name] * value for name, value in losses.items())
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_momentum(self.cfg.objectives.seq.momentum)
        return stats

    def baseline_losses(self, batch: PretrainingBatch) -> dict[str, torch.Tensor]:
        """The plain way: HF's MLM loss over the full vocabulary, and one more encoder pass per side."""
        out = self.encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           labels=batch.labels)
        losses = {"mlm": out.loss}
        if self.model.seq is None and self.model.tok is None:
            return losses
        n = len(batch.side_src_rows)
        sides = []  # (hidden states, attention mask, content tokens, token ids) of the unmasked sides
        for rows, side in ((slice(0, n), "src"), (slice(n, 2 * n), "tgt")):
            mask = getattr(batch, f"side_{side}_mask")
            width = int(mask.sum(1).max())  # each side padded to its own longest sentence
            ids = batch.clean_input_ids[rows, :width]
            hidden = self.encoder.roberta(input_ids=ids, attention_mask=mask[:, :width], output_hidden_states=True)
            sides.append((hidden.hidden_states, mask[:, :width], getattr(batch, f"side_{side}_valid")[:, :width], ids))
        (src, src_mask, src_valid, src_ids), (tgt, tgt_mask, tgt_valid, tgt_ids) = sides
        if self.model.seq is not None:
            layer = self.model.seq.layer
            losses["seq"] = self.model.seq(src[layer], src_mask, tgt[layer], tgt_mask)
        if self.model.tok is not None:
            layer = self.model.tok.layer
            losses["tok"] = self.model.tok(src[layer], src_valid, tgt[layer], tgt_valid, batch.side_spans,
                                           src_ids=src_ids, tgt_ids=tgt_ids)
        return losses


def batch_statistics(batch: PretrainingBatch) -> dict[str, float]:
    """Non-pad tokens of the main pass, positions of all passes, masked tokens, attention span."""
    tokens = int(batch.attention_mask.sum())
    positions = batch.attention_mask.numel()
    real = tokens
    if batch.clean_attention_mask is not None:
        positions += batch.clean_attention_mask.numel()
        real += int(batch.clean_attention_mask.sum())
    if batch.segment_ids is not None:
        seg = batch.segment_ids
        counts = torch.stack([(seg == s).sum(1) for s in range(1, int(seg.max()) + 1)], 1).flatten()
    else:
        counts = batch.attention_mask.sum(1)
    counts = counts.double()
    # A token attends to the tokens of its own sequence: token-weighted mean span = Σ n² / Σ n.
    span = float((counts ** 2).sum() / counts.sum())
    return {"tokens": tokens, "positions": positions, "real_positions": real,
            "main_positions": batch.attention_mask.numel(),
            "masked": int((batch.labels != -100).sum()), "span_x_tokens": span * tokens}


# ----------------------------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_steps(system: System, steps: int) -> dict[str, float]:
    _sync(system.device)
    started = time.perf_counter()
    totals = {"tokens": 0, "positions": 0, "real_positions": 0, "main_positions": 0, "masked": 0, "span_x_tokens": 0.0}
    for _ in range(steps):
        for key, value in system.step().items():
            totals[key] += value
    _sync(system.device)
    totals["seconds"] = time.perf_counter() - started
    return totals


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def compare(specs: list[SystemSpec], args) -> dict:
    """Build every system, warm up, then alternate them for ``args.repeats`` rounds."""
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _compare(specs, args)
    finally:
        torch.set_num_threads(threads)


def _compare(specs: list[SystemSpec], args) -> dict:
    device = resolve_device(args.device)
    shards, special = load_data(args)
    systems = [System(spec, args, shards, special, device) for spec in specs]
    for system in systems:
        run_steps(system, args.warmup)
    rounds: dict[str, list[dict]] = {s.spec.label: [] for s in systems}
    for r in range(args.repeats):
        order = systems if r % 2 == 0 else systems[::-1]
        for system in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            result = run_steps(system, args.steps)
            if device.type == "cuda":
                result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            rounds[system.spec.label].append(result)
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(
            f"{label} {rs[-1]['tokens'] / rs[-1]['seconds']:.0f} tok/s" for label, rs in rounds.items()), flush=True)

    peak = peak_flops(device, args.peak_flops)
    results = {}
    for system in systems:
        rs = rounds[system.spec.label]
        tokens = sum(x["tokens"] for x in rs)
        masked_share = sum(x["masked"] for x in rs) / max(tokens, 1)
        span = sum(x["span_x_tokens"] for x in rs) / max(tokens, 1)
        head_share = masked_share if system.cfg.model.sparse_mlm_head else \
            sum(x["main_positions"] for x in rs) / max(tokens, 1)  # the full head: every main-pass position
        fpt = flops_per_token(system.encoder, span, head_share)
        tps = statistics.median(x["tokens"] / x["seconds"] for x in rs)
        entry = {
            "kind": system.spec.kind, "variant": system.spec.variant, "overrides": system.spec.overrides,
            "options": system.options,
            "tokens_per_s": tps,
            "steps_per_s": statistics.median(args.steps / x["seconds"] for x in rs),
            "tokens_per_s_rounds": [x["tokens"] / x["seconds"] for x in rs],
            "padding_share": 1 - sum(x["real_positions"] for x in rs) / sum(x["positions"] for x in rs),
            "mean_tokens_per_step": tokens / (len(rs) * args.steps),
            "masked_share": masked_share, "mean_attention_span": span,
            "flops_per_token": fpt,
            "mfu": fpt * tps / peak if peak else None,
        }
        if device.type == "cuda":
            entry["peak_memory_mib"] = max(x["peak_memory_mib"] for x in rs)
        results[system.spec.label] = entry
    if device.type != "cuda" and not args.no_memory:
        for system in systems:
            results[system.spec.label]["peak_memory_mib"] = child_peak_rss(system.spec, args)
    return {"device": device_description(device), "peak_flops": peak, "systems": results}


def peak_rss_mib() -> float:
    """Peak resident memory of this process's address space (``VmHWM``; reset at exec, unlike
    ``ru_maxrss``, which a spawned child inherits from its parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_probe(spec: SystemSpec, args, queue) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    shards, special = load_data(args)
    system = System(spec, args, shards, special, device)
    run_steps(system, max(2, args.steps))
    queue.put(peak_rss_mib())


def child_peak_rss(spec: SystemSpec, args) -> float:
    """Peak RSS (MiB) of a fresh process that builds ``spec`` alone and runs a few steps."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_rss_probe, args=(spec, args, queue))
    process.start()
    value = queue.get(timeout=3600)
    process.join()
    return float(value)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Veco2Error(f"--device {name}: no CUDA device here")
    return torch.device(name)


def device_description(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# ----------------------------------------------------------------------------------------------
# Reports


def _ratio_rounds(result: dict, numerator: str, denominator: str) -> float:
    """Median over rounds of the per-round ratio (both systems timed in the same round)."""
    a = result["systems"][numerator]["tokens_per_s_rounds"]
    b = result["systems"][denominator]["tokens_per_s_rounds"]
    return statistics.median(x / y for x, y in zip(a, b))


def write_report(name: str, args, payload: dict) -> Path:
    out = Path(args.out) if args.out else RESULTS / f"{name}.json"
    load = os.getloadavg()
    record = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv),
              "load_average": [round(x, 2) for x in load], "arguments": {k: v for k, v in vars(args).items() if k != "func"},
              **payload, "provenance": provenance({k: v for k, v in vars(args).items() if k != "func"})}
    write_json(out, record)
    print(f"wrote {out}")
    return out


def _print_table(result: dict) -> None:
    print(f"{'system':<28}{'tokens/s':>11}{'padding':>9}{'MFU':>8}{'peak MiB':>10}")
    for label, r in result["systems"].items():
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        memory = f"{r['peak_memory_mib']:.0f}" if r.get("peak_memory_mib") else "-"
        print(f"{label:<28}{r['tokens_per_s']:>11.0f}{100 * r['padding_share']:>8.1f}%{mfu:>8}{memory:>10}")


def cmd_pretrain(args) -> None:
    specs = [SystemSpec.parse(s, args.variant) for s in args.system] if args.system else [
        SystemSpec("veco2", "veco2", args.variant), SystemSpec("baseline", "baseline", args.variant)]
    result = compare(specs, args)
    labels = list(result["systems"])
    result["ratios"] = {f"{a}/{labels[-1]}": _ratio_rounds(result, a, labels[-1]) for a in labels[:-1]}
    _print_table(result)
    for key, value in result["ratios"].items():
        print(f"tokens/s ratio {key}: {value:.2f}x (median of per-round ratios)")
    write_report(args.name or f"pretrain_{result['device']['type']}_{args.size}_{args.variant}_len{args.seq_len}",
                 args, result)


# Late fusion (ablations/extra/late_fusion.yaml): TLM sides apart below the top layer, both
# contrastive terms read the masked main pass (no clean pass).
_LATE_FUSION_TLM = "objectives.mlm.tlm_cross_layers=1"
_LATE_FUSION = (f"{_LATE_FUSION_TLM},objectives.seq.encoding=joint,objectives.seq.layer=-2,"
                "objectives.tok.encoding=joint")
DEFAULT_VARIANTS = [  # the defaults first (ratios are to mlm), then the other encodings of the same objectives
    "mlm=veco2:mlm",
    "mlm_seq_tok=veco2:mlm_seq_tok",
    f"mlm/late_fusion=veco2:mlm:{_LATE_FUSION_TLM}",
    f"mlm_seq_tok/late_fusion=veco2:mlm_seq_tok:{_LATE_FUSION}",
    "mlm_seq_tok/bilingual_separate=veco2:mlm_seq_tok:objectives.mlm.bilingual=separate",
]


def cmd_variants(args) -> None:
    specs = [SystemSpec.parse(s, "mlm") for s in (args.system or DEFAULT_VARIANTS)]
    result = compare(specs, args)
    first = specs[0].label
    result["ratios"] = {f"{s.label}/{first}": _ratio_rounds(result, s.label, first) for s in specs[1:]}
    _print_table(result)
    for key, value in result["ratios"].items():
        print(f"tokens/s ratio {key}: {value:.2f}x")
    write_report(args.name or f"variants_{result['device']['type']}_{args.size}", args, result)


def optimization_specs(variant: str) -> list[SystemSpec]:
    specs = [SystemSpec("veco2", "veco2", variant),
             SystemSpec("bucketing_not_packing", "veco2", variant, ["data.packing=false", "data.bucket_by_length=true"]),
             SystemSpec("no_packing_no_bucketing", "veco2", variant, ["data.packing=false"]),
             SystemSpec("full_vocab_head", "veco2", variant, ["model.sparse_mlm_head=false"]),
             SystemSpec("eager_attention", "veco2", variant, ["model.attn_implementation=eager"])]
    return specs + [SystemSpec("baseline", "baseline", variant)]


def cmd_optimizations(args) -> None:
    specs = optimization_specs(args.variant)
    result = compare(specs, args)
    result["ratios"] = {f"veco2/{s.label}": _ratio_rounds(result, "veco2", s.label) for s in specs[1:]}
    _print_table(result)
    for key, value in result["ratios"].items():
        print(f"tokens/s ratio {key}: {value:.2f}x")
    write_report(args.name or f"optimizations_{result['device']['type']}_{args.size}_{args.variant}", args, result)


def _retrieval_child(n: int, dim: int, k: int, chunk: int, seed: int, queue) -> None:
    from .xtreme.retrieval import mine

    generator = torch.Generator().manual_seed(seed)
    src = torch.randn(n, dim, generator=generator)
    tgt = src + 0.5 * torch.randn(n, dim, generator=generator)  # noisy copies: half of them mined back
    started = time.perf_counter()
    candidates = mine(src, tgt, k=k, chunk_size=chunk)
    seconds = time.perf_counter() - started
    correct = sum(s == t for s, t, _ in candidates[:n])
    queue.put({"seconds": seconds, "candidates": len(candidates), "correct_in_top_n": int(correct),
               "peak_rss_mib": peak_rss_mib(),
               "vectors_mib": 2 * n * dim * 4 / 2**20})


def cmd_retrieval(args) -> None:
    """BUCC mining (margin k-NN both ways + one-to-one selection) in a child process (clean peak RSS)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_retrieval_child, args=(args.n, args.dim, args.k, args.chunk_size, 0, queue))
    process.start()
    result = queue.get(timeout=24 * 3600)
    process.join()
    result.update({"n": args.n, "dim": args.dim, "k": args.k, "chunk_size": args.chunk_size,
                   "device": device_description(torch.device("cpu"))})
    print(f"mining {args.n} x {args.n} vectors of dim {args.dim}: {result['seconds']:.1f} s, "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB (the vectors alone: {result['vectors_mib']:.0f} MiB)")
    write_report(args.name or f"retrieval_cpu_{args.n}x{args.n}_d{args.dim}", args, result)


def cmd_mining(args) -> None:
    script = Path("benchmarks") / "mining_vs_tokenization.py"
    if not script.exists():
        raise Veco2Error(f"{script}: not found (run from the veco2 checkout: it ships with the source tree)")
    command = [sys.executable, str(script), "--pairs", str(args.pairs), "--repeats", str(args.repeats)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise Veco2Error(f"{script} failed: {completed.stderr.strip().splitlines()[-1] if completed.stderr else ''}")
    output = completed.stdout
    result = json.loads(output[output.index("{"):])
    print(json.dumps(result, indent=2))
    write_report(args.name or f"mining_vs_tokenization_{args.pairs}", args,
                 {"script_command": " ".join(command[1:]), "result": result})


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    """``python -m veco2.bench ...`` (the same as ``veco2 bench ...``)."""
    from .cli import main as veco2_main

    argv = list(sys.argv[1:] if argv is None else argv)
    return veco2_main(argv if argv[:1] == ["bench"] else ["bench", *argv])


if __name__ == "__main__":
    sys.exit(main())

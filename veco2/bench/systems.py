"""What ``veco2 bench`` times: a *system* (a model + optimizer + batch recipe: veco2's, or the
plain Hugging Face baseline of the same objective variant), the data it reads, and the token
accounting of one batch."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, load_config
from ..data.batching import PretrainingBatch, SpecialTokens, StepSampler, collate, needs_clean_pass
from ..data.corpus import Corpus
from ..errors import Veco2Error
from ..model import Veco2ForPretraining, build_encoder
from ..provenance import sha256_file
from .synthetic import SyntheticShards

# Variants are ablation files, looked up relative to the working directory (a veco2 checkout), not
# to the package, so that an installed veco2 reads the user's files; a variant ending in .yaml is a
# path of its own.
ABLATIONS = Path("ablations")

# Options of veco2's system unless a spec overrides them (they are also the config defaults; listed
# so that a benchmark records them explicitly).  Packing without length bucketing leaves ~1.5% padding on the demo corpus (bucketing + packing: 4-11%, since rows of
# similar length pack badly), and it keeps every system on the same batches.
VECO2_DEFAULTS = ["data.packing=true", "data.bucket_by_length=false", "model.sparse_mlm_head=true",
                  "model.attn_implementation=sdpa"]


def load_data(args) -> tuple[object, SpecialTokens]:
    """Shards and special tokens for ``--data demo`` or ``--data synthetic``.

    ``--data demo`` pre-tokenizes the embedded demo corpus (cached under ``--cache``); the demo
    corpus supports a tokenizer of ``--tokenizer-vocab`` (8000) pieces, and the model's embedding
    matrix and MLM output layer are sized ``--vocab-size`` (32000 by default): the compute is that
    of a 32k-vocabulary model, the rows past the tokenizer's pieces are simply never predicted.
    ``--data synthetic`` draws random token ids with lengths uniform in ``[--min-len, --seq-len]``
    (and random synonym spans), for controlled sequence lengths (GPU runs at 128 / 512 tokens); it
    needs no corpus and no tokenizer.
    """
    if args.data == "synthetic":
        special = SpecialTokens(bos=0, eos=2, pad=1, mask=4, vocab_size=args.vocab_size)
        shards = SyntheticShards.make(args.synthetic_count, args.min_len or max(4, args.seq_len // 2),
                                      args.seq_len, args.vocab_size)
        return shards, special
    from ..trainer import prepare_data

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
    """One way of running training steps, with the batch recipe, model and optimizer it needs.

    **The baseline** is the objective written the plain way: ``XLMRobertaForMaskedLM(labels=...)``
    (the full-vocabulary head at every position), eager attention, float32, batches padded to their
    longest sequence without length bucketing or packing, plain TLM rows (every layer joint, one run
    of positions), both contrastive terms on the sides encoded by two extra forward passes (one per
    side, unmasked, each padded to its longest sentence), as the default objective reads them,
    ``torch.optim.AdamW`` with its default (non-fused) implementation.  The loss terms are veco2's
    own ``SequenceContrastive`` / ``TokenContrastive`` modules, so the objective math is the same;
    only the engineering differs.  Batches draw the same number of monolingual and bilingual
    instances per step from the same shards.
    """

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
        self.cfg = _apply_overrides(spec.variant, base + args.overrides + spec.overrides)
        cfg = self.cfg
        on_gpu = device.type == "cuda"
        self.bf16 = spec.kind == "veco2" and on_gpu and args.precision in ("auto", "bf16")
        torch.manual_seed(0)
        self.encoder = build_encoder(cfg.model, vocab_size=args.vocab_size, pad_token_id=special.pad)
        self.model = Veco2ForPretraining(self.encoder, cfg.objectives, sparse_mlm_head=cfg.model.sparse_mlm_head)
        self.model.to(device).train()
        from ..trainer import _param_groups

        fused = spec.kind == "veco2" and on_gpu and not args.no_fused
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, cfg.training.weight_decay), lr=1e-4,
                                           **({"fused": True} if fused else {}))
        self.forward = self.model
        if spec.kind == "veco2" and args.compile:
            self.forward = torch.compile(self.model, dynamic=True)
        self.sampler = StepSampler(shards.num_mono, shards.num_bi, shards.mono_lengths(), shards.bi_lengths(),
                                   cfg.training.batch_size, cfg.data.bilingual_ratio, 0, cfg.data.bucket_by_length,
                                   cfg.data.bucket_window, **self._language_sampling(shards, cfg))
        self.weights = cfg.objectives.weights()
        self.step_index = 0
        self.options = {"packing": cfg.data.packing,
                        "bucket_by_length": cfg.data.bucket_by_length, "sparse_mlm_head": cfg.model.sparse_mlm_head,
                        "attn_implementation": cfg.model.attn_implementation, "bf16_autocast": self.bf16,
                        "fused_adamw": fused, "compile": spec.kind == "veco2" and args.compile,
                        "seq_encoding": cfg.objectives.seq.encoding, "mlm_bilingual": cfg.objectives.mlm.bilingual,
                        "tok_encoding": cfg.objectives.tok.encoding, "clean_pass": needs_clean_pass(cfg)}

    # -- one step ---------------------------------------------------------------------------------
    @staticmethod
    def _language_sampling(shards, cfg) -> dict:
        """The trainer's smoothed language sampling, on shards that record languages (not synthetic ones)."""
        if not hasattr(shards, "languages"):
            return {}
        return {"mono_languages": shards.languages("mono"), "bi_languages": shards.languages("bi"),
                "language_alpha": cfg.data.language_sampling_alpha}

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

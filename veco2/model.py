"""The pre-training model: an XLM-R encoder with a sparse MLM head and the two contrastive terms.

Read top to bottom:

1. :data:`SIZES` and :func:`build_encoder` make an ``XLMRobertaForMaskedLM`` from a size preset
   or load one from any Hugging Face checkpoint.  It is saved with ``save_pretrained``
   (safetensors), so ``transformers.AutoModel.from_pretrained(path)`` loads the encoder with no
   veco2 code.
2. :class:`Veco2ForPretraining` runs the encoder passes a batch needs and returns each loss term.
   A batch (built by ``veco2.data.batching``) holds one *main* pass of masked sequences
   (monolingual instances, plus bilingual instances as TLM concatenations -- XLM's TLM, the sides
   attending to each other in every layer -- or as separately masked sides) and, when a
   contrastive term asks for clean separately encoded sides (the default for both), one *clean*
   pass: both sides of every pair, unmasked, packed into one batched encoder call that runs only
   as deep as the deepest layer a contrastive term reads.  The options ``encoding=joint`` read the
   main pass instead, with the positions chosen for MLM left out (``drop_masked_positions``).

Loss: L = w_mlm · L_mlm + λ_seq · L_seq + λ_tok · L_tok (see ``veco2.objectives``).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForMaskedLM, XLMRobertaConfig, XLMRobertaForMaskedLM

from .config import ModelConfig, ObjectivesConfig
from .errors import Veco2Error
from .objectives import (IGNORE_INDEX, MaskedLM, SequenceContrastive, TokenContrastive, drop_masked_positions,
                         momentum_update)
from .xtreme.evaluate import default_layer

log = logging.getLogger(__name__)

# hidden, layers, heads, feed-forward.  base/large are XLM-R's; tiny/small are for CPU demos and tests.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (128, 4, 4, 512),
    "small": (384, 6, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
}


def build_encoder(cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> XLMRobertaForMaskedLM:
    """A randomly initialised XLM-R MLM model of ``cfg.size``, or the checkpoint ``cfg.init_from``."""
    if cfg.init_from:
        try:
            model = AutoModelForMaskedLM.from_pretrained(cfg.init_from, attn_implementation=cfg.attn_implementation)
        except (OSError, ValueError) as err:
            raise Veco2Error(f"model.init_from={cfg.init_from!r}: cannot load a masked-LM checkpoint: "
                             f"{str(err).splitlines()[0]}") from None
        if model.get_input_embeddings().num_embeddings < vocab_size:
            raise Veco2Error(f"model.init_from={cfg.init_from!r} has a vocabulary of "
                             f"{model.get_input_embeddings().num_embeddings} but the tokenizer has {vocab_size}; "
                             "use the checkpoint's own tokenizer (data.tokenizer)")
        return model
    hidden, layers, heads, ffn = SIZES[cfg.size]
    config = XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size or hidden,
        num_hidden_layers=cfg.num_layers or layers,
        num_attention_heads=cfg.num_heads or heads,
        intermediate_size=cfg.intermediate_size or ffn,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        tie_word_embeddings=True,
    )
    if config.hidden_size % config.num_attention_heads:
        raise Veco2Error(f"model: hidden_size {config.hidden_size} is not divisible by num_heads "
                         f"{config.num_attention_heads}")
    config._attn_implementation = cfg.attn_implementation
    return XLMRobertaForMaskedLM(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(encoder: XLMRobertaForMaskedLM, seq_len: float, masked_share: float) -> float:
    """Training FLOPs per non-pad token: 6·N + 12·L·d·T.

    6·N: forward + backward matmul FLOPs of N parameters per token (Kaplan et al. 2020, arXiv
    2001.08361, section 2.1; Narayanan et al. 2021, arXiv 2104.04473, section 5.1); 12·L·d·T: the
    attention scores and values over a span of T tokens (PaLM, Chowdhery et al. 2022, arXiv
    2204.02311, appendix B, which also defines MFU as these FLOPs × tokens/s ÷ peak).  N counts
    the parameters that take part in a matmul for a token: the encoder layers for every token,
    the MLM head (dense + vocabulary projection) only at masked positions.  Embedding look-ups
    are not matmuls.
    """
    cfg = encoder.config
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    per_layer = 4 * d * d + 2 * d * cfg.intermediate_size
    head = d * d + d * vocab
    n = layers * per_layer + masked_share * head
    return 6 * n + 12 * layers * d * seq_len


@dataclass
class PairView:
    """Both sides of the bilingual pairs of a batch, as one contrastive objective sees them."""

    src: torch.Tensor  # [N, Ts, H]
    src_mask: torch.Tensor  # tokens pooled into the sentence vector
    tgt: torch.Tensor
    tgt_mask: torch.Tensor
    src_valid: torch.Tensor  # content tokens (no special, no pad, not chosen for MLM): words and negatives
    tgt_valid: torch.Tensor
    spans: torch.Tensor  # [P, 5] (pair, src_start, src_end, tgt_start, tgt_end) in these coordinates
    src_ids: torch.Tensor  # [N, Ts] unmasked token ids (copies of a word are no negatives)
    tgt_ids: torch.Tensor


@dataclass
class PassOutput:
    hidden_states: tuple[torch.Tensor, ...]  # embeddings + every layer, each [B, T, H]
    attention_mask: torch.Tensor


class Veco2ForPretraining(nn.Module):
    """Encoder + objectives.  ``forward(batch)`` returns ``{"mlm": ..., "seq": ..., "tok": ...}``.

    The batch keys are documented in ``veco2.data.batching``.  ``retrieval_layer``: the layer the
    retrieval evaluation reads (``evaluation.retrieval_layer``; None: 2/3 of the depth); the
    sequence term pools it when ``seq.layer`` is None (the default), so both read one layer.
    """

    def __init__(self, encoder: XLMRobertaForMaskedLM, objectives: ObjectivesConfig, sparse_mlm_head: bool = True,
                 retrieval_layer: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.objectives_config = objectives
        self.sparse_mlm_head = sparse_mlm_head
        self.mlm = MaskedLM(mode="tlm" if objectives.mlm.bilingual == "tlm" else "mlm", rate=objectives.mlm.rate,
                            mask_prob=objectives.mlm.mask_prob, random_prob=objectives.mlm.random_prob)
        hidden = encoder.config.hidden_size
        seq, tok = objectives.seq, objectives.tok
        cross, layers = objectives.mlm.tlm_cross_layers, encoder.config.num_hidden_layers
        if cross is not None and cross > layers:
            raise Veco2Error(f"objectives.mlm.tlm_cross_layers={cross}: the encoder has only {layers} layers")
        # Hidden-state indices as 0 .. L (a clean pass that stops early holds fewer states).
        self.seq_layer = self._layer_index("seq.layer", self.resolve_seq_layer(seq.layer, retrieval_layer, layers),
                                           layers)
        tok_layer = self._layer_index("tok.layer", tok.layer, layers)
        if seq.weight > 0 and seq.encoding == "joint" and objectives.mlm.bilingual == "tlm":
            apart = layers - (layers if cross is None else cross)  # last hidden state with the sides apart
            if self.seq_layer % (layers + 1) > apart:
                log.warning("objectives.seq.layer=%d pools hidden states in which the two sides of a TLM row "
                            "attend to each other (apart up to %d with tlm_cross_layers=%s): the sequence loss "
                            "can match them through each other", self.seq_layer, apart, cross)
        self.seq = SequenceContrastive(
            hidden_size=hidden, temperature=seq.temperature, pooling=seq.pooling, layer=self.seq_layer,
            projection=seq.projection, symmetric=seq.symmetric, negatives=seq.negatives,
            queue_size=seq.queue_size, encoding=seq.encoding, similarity=seq.similarity,
        ) if seq.weight > 0 else None
        self.tok = TokenContrastive(
            hidden_size=hidden, temperature=tok.temperature, pooling=tok.subword_pooling,
            negatives=tok.negatives, exclude_other_matched=tok.exclude_other_matched, symmetric=tok.symmetric,
            layer=tok_layer, projection=tok.projection, exclude_copies=tok.exclude_copies,
        ) if tok.weight > 0 else None
        # The clean pass runs only as deep as the deepest hidden state a term reads from it.
        clean_layers = [self.seq_layer] if self.seq is not None and (seq.encoding == "separate" or
                                                                       seq.negatives == "queue") else []
        if self.tok is not None and tok.encoding == "separate":
            clean_layers.append(tok_layer)
        self.clean_depth = max(clean_layers, default=layers)
        # InfoXLM-style momentum encoder for the key side of the sequence queue; never trained by SGD.
        self.momentum_encoder: nn.Module | None = None
        self.momentum_seq: nn.Module | None = None
        if self.seq is not None and seq.negatives == "queue":
            self.momentum_encoder = copy.deepcopy(encoder.roberta).requires_grad_(False)
            self.momentum_seq = copy.deepcopy(self.seq).requires_grad_(False)

    @staticmethod
    def _layer_index(name: str, layer: int, num_layers: int) -> int:
        if not -num_layers - 1 <= layer <= num_layers:
            raise Veco2Error(f"objectives.{name}={layer}: the encoder has hidden states 0 .. {num_layers} "
                             f"(or {-num_layers - 1} .. -1)")
        return layer % (num_layers + 1)

    @staticmethod
    def resolve_seq_layer(layer: int | None, retrieval_layer: int | None, num_layers: int) -> int:
        """``seq.layer``, or (None) the retrieval layer: ``evaluation.retrieval_layer``, else 2/3 depth."""
        if layer is not None:
            return layer
        return retrieval_layer if retrieval_layer is not None else default_layer(num_layers)

    # -- encoder passes ---------------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, encoder: nn.Module | None = None,
               segment_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
               side_ids: torch.Tensor | None = None, depth: int | None = None) -> PassOutput:
        """One encoder pass.  With ``segment_ids`` (packed rows, see ``veco2.data.batching``) a token
        attends only to the tokens of its own sequence: a block-diagonal 4D mask, which
        transformers passes through unchanged to the attention implementation.  With ``side_ids``
        (``mlm.tlm_cross_layers``) the two sides of a TLM row attend to each other only in the
        top ``tlm_cross_layers`` layers.  With ``depth`` below the encoder's layer count only the
        first ``depth`` layers run (hidden states 0 .. depth, the same values as a full pass)."""
        encoder = encoder or self.encoder.roberta
        if side_ids is not None:
            return self._encode_late_fusion(encoder, input_ids, attention_mask, segment_ids, position_ids, side_ids)
        if depth is not None and depth < len(encoder.encoder.layer):
            sequences = attention_mask if segment_ids is None else segment_ids
            mask = self.block_diagonal_mask(sequences)  # pad (0) only sees pad; real tokens only real ones
            hidden = encoder.embeddings(input_ids=input_ids, position_ids=position_ids)
            states = [hidden]
            for layer in encoder.encoder.layer[:depth]:
                hidden = layer(hidden, attention_mask=mask)
                states.append(hidden)
            return PassOutput(tuple(states), attention_mask)
        mask = attention_mask if segment_ids is None else self.block_diagonal_mask(segment_ids)
        out = encoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                      output_hidden_states=True, return_dict=True)
        return PassOutput(out.hidden_states, attention_mask)

    def _encode_late_fusion(self, encoder: nn.Module, input_ids, attention_mask, segment_ids, position_ids,
                            side_ids) -> PassOutput:
        """The encoder's layers run one by one: the lower ones with a mask that also separates the
        sides of a TLM row (``side_ids``: 1 source, 2 target, 0 elsewhere), the top
        ``tlm_cross_layers`` with the usual per-sequence mask."""
        sequences = attention_mask if segment_ids is None else segment_ids  # pad (0) only sees pad
        joint = self.block_diagonal_mask(sequences)
        apart = self.block_diagonal_mask(sequences * 3 + side_ids)
        layers = encoder.encoder.layer
        first_cross = len(layers) - self.objectives_config.mlm.tlm_cross_layers
        hidden = encoder.embeddings(input_ids=input_ids, position_ids=position_ids)
        states = [hidden]
        for index, layer in enumerate(layers):
            hidden = layer(hidden, attention_mask=apart if index < first_cross else joint)
            states.append(hidden)
        return PassOutput(tuple(states), attention_mask)

    def block_diagonal_mask(self, segment_ids: torch.Tensor) -> torch.Tensor:
        """[R, 1, W, W]: True (sdpa) / 0.0 (eager) where query and key are in the same sequence.

        Padding (segment 0) attends to padding, so no softmax row is empty (no NaN); its outputs
        are never read.
        """
        same = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
        implementation = self.encoder.config._attn_implementation
        if implementation == "sdpa":
            return same
        if implementation == "eager":
            dtype = self.encoder.dtype
            return torch.zeros(same.shape, dtype=dtype, device=same.device).masked_fill_(~same, torch.finfo(dtype).min)
        raise Veco2Error(f"data.packing needs model.attn_implementation sdpa or eager, not {implementation!r} "
                         "(FlashAttention-2 takes packed sequences without a mask; not wired up here)")

    def mlm_loss(self, main: PassOutput, labels: torch.Tensor) -> torch.Tensor:
        if self.sparse_mlm_head:
            return self.mlm(main.hidden_states[-1], labels, self.encoder.lm_head)
        # The plain way (kept for benchmarks): logits over the whole vocabulary at every position.
        logits = self.encoder.lm_head(main.hidden_states[-1])
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)

    # -- the objectives ---------------------------------------------------------------------------
    def pair_view(self, batch: dict[str, torch.Tensor], main: PassOutput, clean: PassOutput | None,
                  encoding: str, layer: int) -> PairView:
        """Hidden states of both sides of every bilingual pair, from the joint (TLM) rows of the main
        pass, or from the separately encoded sides (the clean pass when there is one, else the
        separately masked sides of the main pass).

        Sentence pooling covers ``<s> x </s>`` / ``<s> y </s>`` of separately encoded sides (every
        non-pad token, as the retrieval evaluation pools) and ``<s> x </s>`` / ``</s> y </s>`` of a
        TLM row, or the content tokens only (``seq.pool_special_tokens=false``).  Views of the
        masked main pass leave out every position chosen for MLM: from the pooled tokens, the
        valid tokens and the spans (:func:`veco2.objectives.drop_masked_positions`)."""
        specials = self.objectives_config.seq.pool_special_tokens
        if encoding == "joint":
            hidden = self._rows(main.hidden_states[layer], batch, "pair")
            src_pool, tgt_pool = ((batch["joint_src_pool"], batch["joint_tgt_pool"]) if specials
                                  else (batch["joint_src_mask"], batch["joint_tgt_mask"]))
            view = PairView(hidden, src_pool, hidden, tgt_pool, batch["joint_src_mask"], batch["joint_tgt_mask"],
                            batch["joint_spans"], *[self._rows(self._unmasked_ids(batch), batch, "pair")] * 2)
            chosen = self._rows(batch["labels"], batch, "pair") != IGNORE_INDEX
            return self._without_masked(view, chosen, chosen)
        source = clean or main
        hidden = source.hidden_states[layer]
        ids = batch["clean_input_ids"] if clean is not None else self._unmasked_ids(batch)
        src_valid, tgt_valid = batch["side_src_valid"], batch["side_tgt_valid"]
        src_pool, tgt_pool = ((batch["side_src_mask"], batch["side_tgt_mask"]) if specials else (src_valid, tgt_valid))
        view = PairView(self._rows(hidden, batch, "side_src"), src_pool, self._rows(hidden, batch, "side_tgt"),
                        tgt_pool, src_valid, tgt_valid, batch["side_spans"],
                        self._rows(ids, batch, "side_src"), self._rows(ids, batch, "side_tgt"))
        if clean is not None:
            return view
        labels = batch["labels"]  # mlm.bilingual=separate: the sides of the masked main pass
        return self._without_masked(view, self._rows(labels, batch, "side_src") != IGNORE_INDEX,
                                    self._rows(labels, batch, "side_tgt") != IGNORE_INDEX)

    @staticmethod
    def _unmasked_ids(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The main pass's token ids before masking (the labels hold the originals where masked)."""
        return torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])

    @staticmethod
    def _without_masked(view: PairView, src_chosen: torch.Tensor, tgt_chosen: torch.Tensor) -> PairView:
        src_valid, tgt_valid, spans = drop_masked_positions(view.src_valid, view.tgt_valid, view.spans,
                                                            src_chosen, tgt_chosen)
        return PairView(view.src, view.src_mask.bool() & ~src_chosen, view.tgt, view.tgt_mask.bool() & ~tgt_chosen,
                        src_valid, tgt_valid, spans, view.src_ids, view.tgt_ids)

    @staticmethod
    def _rows(hidden: torch.Tensor, batch: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        """[N, T, H] hidden states of the sequences ``name``: whole rows, or gathered from packed rows."""
        if f"{name}_index" in batch:
            return hidden.flatten(0, 1)[batch[f"{name}_index"]]
        return hidden[batch[f"{name}_rows"]]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        main = self.encode(batch["input_ids"], batch["attention_mask"], segment_ids=batch.get("segment_ids"),
                           position_ids=batch.get("position_ids"), side_ids=batch.get("side_ids"))
        losses = {"mlm": self.mlm_loss(main, batch["labels"])}
        if self.seq is None and self.tok is None:
            return losses
        clean = (self.encode(batch["clean_input_ids"], batch["clean_attention_mask"],
                             segment_ids=batch.get("clean_segment_ids"), position_ids=batch.get("clean_position_ids"),
                             depth=self.clean_depth)
                 if "clean_input_ids" in batch else None)
        if self.seq is not None:
            view = self.pair_view(batch, main, clean, self.seq.encoding, self.seq.layer)
            keys = self.momentum_keys(batch) if self.momentum_encoder is not None else {}
            losses["seq"] = self.seq(view.src, view.src_mask, view.tgt, view.tgt_mask, **keys)
        if self.tok is not None:
            view = self.pair_view(batch, main, clean, self.objectives_config.tok.encoding, self.tok.layer)
            losses["tok"] = self.tok(view.src, view.src_valid, view.tgt, view.tgt_valid, view.spans,
                                     src_ids=view.src_ids, tgt_ids=view.tgt_ids)
        return losses

    @torch.no_grad()
    def momentum_keys(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keys of the InfoXLM-style queue: the clean sides encoded by the momentum encoder."""
        keys = self.encode(batch["clean_input_ids"], batch["clean_attention_mask"], self.momentum_encoder,
                           segment_ids=batch.get("clean_segment_ids"), position_ids=batch.get("clean_position_ids"),
                           depth=self.seq.layer)
        hidden = keys.hidden_states[self.seq.layer]
        specials = self.objectives_config.seq.pool_special_tokens
        src_mask, tgt_mask = (("side_src_mask", "side_tgt_mask") if specials else ("side_src_valid", "side_tgt_valid"))
        return {"src_keys": self.momentum_seq.embed(self._rows(hidden, batch, "side_src"), batch[src_mask]),
                "tgt_keys": self.momentum_seq.embed(self._rows(hidden, batch, "side_tgt"), batch[tgt_mask])}

    @torch.no_grad()
    def update_momentum(self, momentum: float) -> None:
        if self.momentum_encoder is not None:
            momentum_update(self.encoder.roberta, self.momentum_encoder, momentum)
            momentum_update(self.seq, self.momentum_seq, momentum)

"""The pre-training model: an XLM-R encoder with a sparse MLM head and the two contrastive terms.

Read top to bottom:

1. :data:`SIZES` and :func:`build_encoder` make an ``XLMRobertaForMaskedLM`` from a named size
   or load one from any Hugging Face checkpoint.  It is saved with ``save_pretrained``
   (safetensors), so ``transformers.AutoModel.from_pretrained(path)`` loads the encoder with no
   veco2 code.
2. :class:`Veco2ForPretraining` runs the encoder passes a batch needs and returns each loss term.
   It builds one objective per enabled entry of the registry ``veco2.objectives.OBJECTIVES``
   (``cls.from_config(config section)``) and asks each for its term of the encoded batch
   (:class:`EncodedBatch`).  A :class:`~veco2.data.batching.PretrainingBatch` holds one *main*
   pass of masked sequences (monolingual instances, plus bilingual instances as TLM
   concatenations -- XLM's TLM, the sides attending to each other in every layer -- or as
   separately masked sides) and, when a
   contrastive term asks for clean separately encoded sides (the default for both), one *clean*
   pass: both sides of every pair, unmasked, packed into one batched encoder call that runs only
   as deep as the deepest layer a contrastive term reads.  The options ``encoding=joint`` read the
   main pass instead, with the positions chosen for MLM left out (``drop_masked_positions``).

Loss: L = w_mlm · L_mlm + λ_seq · L_seq + λ_tok · L_tok (+ the terms of registered objectives; the
weights are ``ObjectivesConfig.weights()``, see ``veco2.objectives``).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForMaskedLM, XLMRobertaConfig, XLMRobertaForMaskedLM

from .config import ModelConfig, ObjectivesConfig
from .data.batching import PretrainingBatch
from .errors import Veco2Error
from .pretrained import resolve_pretrained
from .weights import load_checked
from .objectives import OBJECTIVES, IGNORE_INDEX, ObjectiveContext, drop_masked_positions, momentum_update
from .xtreme.retrieval_run import default_layer

log = logging.getLogger(__name__)

# hidden, layers, heads, feed-forward.  base/large are XLM-R's; tiny/small are for CPU demos and tests.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (128, 4, 4, 512),
    "small": (384, 6, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
}


def build_encoder(cfg: ModelConfig, vocab_size: int, pad_token_id: int, *,
                  init_source: str | None = None) -> XLMRobertaForMaskedLM:
    """A randomly initialised XLM-R MLM model of ``cfg.size``, or the checkpoint ``cfg.init_from``
    (``init_source``: the directory it resolves to, when the caller resolved it already)."""
    if cfg.init_from:
        # A hub name is downloaded (or found in the cache) first; the weights are then loaded checked:
        # a file that does not fit the masked-LM model is an error, not a randomly initialised
        # encoder (veco2.weights).  The MLM head is pre-trained further, so it must be there too.
        source = init_source or resolve_pretrained(cfg.init_from)
        model = load_checked(AutoModelForMaskedLM, source, new_head_prefixes=(),
                             attn_implementation=cfg.attn_implementation)
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


@dataclass
class EncodedBatch:
    """What an objective's ``batch_loss`` reads: the batch, its encoder passes (``clean``: None when
    the batch has no clean pass) and the model (LM head, pair views, momentum encoder)."""

    batch: PretrainingBatch
    main: PassOutput
    clean: PassOutput | None
    model: "Veco2ForPretraining"


class Veco2ForPretraining(nn.Module):
    """Encoder + objectives.  ``forward(batch)`` returns ``{"mlm": ..., "seq": ..., "tok": ...}``.

    One submodule per enabled objective, named as in the registry (``self.seq`` is the
    :class:`~veco2.objectives.SequenceContrastive`; a switched-off term's attribute is None), so
    the state dict names stay those of the objectives.  The batch fields are documented in
    ``veco2.data.batching``.  ``retrieval_layer``: the layer the retrieval evaluation reads
    (``evaluation.retrieval_layer``; None: 2/3 of the depth); the sequence term pools it when
    ``seq.layer`` is None (the default), so both read one layer.
    """

    def __init__(self, encoder: XLMRobertaForMaskedLM, objectives: ObjectivesConfig, sparse_mlm_head: bool = True,
                 retrieval_layer: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.objectives_config = objectives
        self.sparse_mlm_head = sparse_mlm_head
        layers = encoder.config.num_hidden_layers
        context = ObjectiveContext(encoder.config.hidden_size, layers,
                                   retrieval_layer if retrieval_layer is not None else default_layer(layers),
                                   objectives)
        sections = objectives.sections()
        self.objective_names: list[str] = []  # the enabled terms, in registry order
        for name, cls in OBJECTIVES.items():
            if name not in sections:  # a config made before this objective was registered
                continue
            cls.check(sections[name], context)
            if name in self.__dict__ or name in self._modules or hasattr(nn.Module, name):
                raise Veco2Error(f"objective {name!r}: the name is taken by an attribute of Veco2ForPretraining")
            if cls.enabled(sections[name]):
                self.add_module(name, cls.from_config(sections[name], context))
                self.objective_names.append(name)
            else:
                setattr(self, name, None)
        # The clean pass runs only as deep as the deepest hidden state a term reads from it.
        self.clean_depth = max((layer for name in self.objective_names
                                if (layer := getattr(self, name).clean_layer) is not None), default=layers)
        # InfoXLM-style momentum encoder for the key side of the sequence queue; never trained by SGD.
        self.momentum_encoder: nn.Module | None = None
        self.momentum_seq: nn.Module | None = None
        if self.seq is not None and self.seq.negatives == "queue":
            self.momentum_encoder = copy.deepcopy(encoder.roberta).requires_grad_(False)
            self.momentum_seq = copy.deepcopy(self.seq).requires_grad_(False)

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

    # -- the objectives ---------------------------------------------------------------------------
    def pair_view(self, batch: PretrainingBatch, main: PassOutput, clean: PassOutput | None,
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
            hidden = batch.tlm_rows(main.hidden_states[layer])
            src_pool, tgt_pool = ((batch.joint_src_pool, batch.joint_tgt_pool) if specials
                                  else (batch.joint_src_mask, batch.joint_tgt_mask))
            view = PairView(hidden, src_pool, hidden, tgt_pool, batch.joint_src_mask, batch.joint_tgt_mask,
                            batch.joint_spans, *[batch.tlm_rows(self._unmasked_ids(batch))] * 2)
            chosen = batch.tlm_rows(batch.labels) != IGNORE_INDEX
            return self._without_masked(view, chosen, chosen)
        source = clean or main
        hidden = source.hidden_states[layer]
        ids = batch.clean_input_ids if clean is not None else self._unmasked_ids(batch)
        src_valid, tgt_valid = batch.side_src_valid, batch.side_tgt_valid
        src_pool, tgt_pool = ((batch.side_src_mask, batch.side_tgt_mask) if specials else (src_valid, tgt_valid))
        view = PairView(batch.src_sides(hidden), src_pool, batch.tgt_sides(hidden), tgt_pool, src_valid, tgt_valid,
                        batch.side_spans, batch.src_sides(ids), batch.tgt_sides(ids))
        if clean is not None:
            return view
        labels = batch.labels  # mlm.bilingual=separate: the sides of the masked main pass
        return self._without_masked(view, batch.src_sides(labels) != IGNORE_INDEX,
                                    batch.tgt_sides(labels) != IGNORE_INDEX)

    @staticmethod
    def _unmasked_ids(batch: PretrainingBatch) -> torch.Tensor:
        """The main pass's token ids before masking (the labels hold the originals where masked)."""
        return torch.where(batch.labels != IGNORE_INDEX, batch.labels, batch.input_ids)

    @staticmethod
    def _without_masked(view: PairView, src_chosen: torch.Tensor, tgt_chosen: torch.Tensor) -> PairView:
        src_valid, tgt_valid, spans = drop_masked_positions(view.src_valid, view.tgt_valid, view.spans,
                                                            src_chosen, tgt_chosen)
        return PairView(view.src, view.src_mask.bool() & ~src_chosen, view.tgt, view.tgt_mask.bool() & ~tgt_chosen,
                        src_valid, tgt_valid, spans, view.src_ids, view.tgt_ids)

    def forward(self, batch: PretrainingBatch) -> dict[str, torch.Tensor]:
        """Each enabled objective's term of ``batch``, by name, in registry order."""
        main = self.encode(batch.input_ids, batch.attention_mask, segment_ids=batch.segment_ids,
                           position_ids=batch.position_ids, side_ids=batch.side_ids)
        clean = (self.encode(batch.clean_input_ids, batch.clean_attention_mask, segment_ids=batch.clean_segment_ids,
                             position_ids=batch.clean_position_ids, depth=self.clean_depth)
                 if batch.clean_input_ids is not None else None)
        encoded = EncodedBatch(batch, main, clean, self)
        return {name: getattr(self, name).batch_loss(encoded) for name in self.objective_names}

    @torch.no_grad()
    def momentum_keys(self, batch: PretrainingBatch) -> dict[str, torch.Tensor]:
        """Keys of the InfoXLM-style queue: the clean sides encoded by the momentum encoder."""
        keys = self.encode(batch.clean_input_ids, batch.clean_attention_mask, self.momentum_encoder,
                           segment_ids=batch.clean_segment_ids, position_ids=batch.clean_position_ids,
                           depth=self.seq.layer)
        hidden = keys.hidden_states[self.seq.layer]
        specials = self.objectives_config.seq.pool_special_tokens
        src_mask, tgt_mask = ((batch.side_src_mask, batch.side_tgt_mask) if specials
                              else (batch.side_src_valid, batch.side_tgt_valid))
        return {"src_keys": self.momentum_seq.embed(batch.src_sides(hidden), src_mask),
                "tgt_keys": self.momentum_seq.embed(batch.tgt_sides(hidden), tgt_mask)}

    @torch.no_grad()
    def update_momentum(self, momentum: float) -> None:
        if self.momentum_encoder is not None:
            momentum_update(self.encoder.roberta, self.momentum_encoder, momentum)
            momentum_update(self.seq, self.momentum_seq, momentum)

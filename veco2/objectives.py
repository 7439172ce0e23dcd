"""Pre-training objectives, one class each (sentence-transformers ``losses/`` style): an
:class:`Objective` whose ``forward`` takes hidden states and masks and returns a scalar loss, built
from its config section ``objectives.NAME`` by :meth:`Objective.from_config` and registered in
:data:`OBJECTIVES` (:func:`register_objective`; ``docs/architecture.md``).  :class:`MaskedLM`
(MLM, XLM's TLM), :class:`SequenceContrastive` (InfoNCE between the two sides of a parallel pair)
and :class:`TokenContrastive` (InfoNCE between dictionary synonyms inside a pair); the total is
``L = L_mlm + λ_seq·L_seq + λ_tok·L_tok`` (:func:`combine_losses`).

VECO 2.0 (arXiv 2304.08205) names these terms but publishes neither equations nor settings: each
class is a reconstruction from InfoXLM (arXiv 2007.07834), XLM-Align (arXiv 2106.06381), XLM's TLM
(arXiv 1901.07291) and InfoNCE (arXiv 1807.03748), every unpublished choice a named option whose
default its docstring explains.  Hidden states are ``[B, T, H]``; masks ``[B, T]``, 1 = real token.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import (BUILTIN_OBJECTIVES, MaskedLMConfig, ObjectivesConfig, SequenceContrastiveConfig,
                     TokenContrastiveConfig, add_objective_section, remove_objective_section)
from .errors import Veco2Error

if TYPE_CHECKING:
    from .model import EncodedBatch

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value of positions that are not predicted (PyTorch's CE default)


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")


def _zero_with_graph(*tensors: torch.Tensor) -> torch.Tensor:
    """An exact 0 that is connected to every tensor given, so backward() and DDP still see them.

    Sums over empty slices: unlike ``x.sum() * 0`` this stays 0 even if ``x`` holds inf/nan.
    """
    return sum(t.reshape(-1)[:0].sum() for t in tensors)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision logits before softmax / cross-entropy; leave fp32 and fp64 alone."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _projection_head(hidden_size: int | None, projection: int | None, kind: str) -> nn.Module:
    """The optional head between pooled hidden states and the contrastive space.

    ``projection=None`` -> identity.  Otherwise an output dimension ``d`` and ``kind``:
    ``"linear_tanh"``: ``tanh(W h + b)``, W: H -> d (the BERT/XLM-R pooler form, used by InfoXLM);
    ``"mlp"``: ``W2 relu(W1 h + b1) + b2``, W1: H -> H, W2: H -> d (SimCLR's 2-layer head).
    """
    _check_choice("projection_kind", kind, {"linear_tanh", "mlp"})
    if projection is None:
        return nn.Identity()
    if hidden_size is None:
        raise ValueError("a projection needs hidden_size")
    if kind == "linear_tanh":
        return nn.Sequential(nn.Linear(hidden_size, projection), nn.Tanh())
    return nn.Sequential(
        nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, projection)
    )


# ---------------------------------------------------------------------------------------------
# 0. The objective interface and the registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectiveContext:
    """What building an objective may need beyond its own config section.

    ``hidden_size`` / ``num_layers``: the encoder's; ``retrieval_layer``: the hidden layer the
    retrieval evaluation reads (``evaluation.retrieval_layer``, else 2/3 of the depth);
    ``objectives``: the whole ``objectives`` config (for options that depend on another term's,
    e.g. the sequence term's warning about TLM rows).
    """

    hidden_size: int
    num_layers: int
    retrieval_layer: int
    objectives: ObjectivesConfig

    def layer_index(self, key: str, layer: int) -> int:
        """A hidden-state index ``layer`` (``-L-1 .. L``) as ``0 .. L``; a Veco2Error naming
        ``objectives.KEY`` otherwise."""
        layers = self.num_layers
        if not -layers - 1 <= layer <= layers:
            raise Veco2Error(f"objectives.{key}={layer}: the encoder has hidden states 0 .. {layers} "
                             f"(or {-layers - 1} .. -1)")
        return layer % (layers + 1)


class Objective(nn.Module):
    """Base class of a pre-training objective: one loss term ``L_NAME`` of the total.

    A subclass implements ``forward`` (the loss from tensors, testable on its own) and
    :meth:`batch_loss` (which tensors of an encoded batch it reads); it may override
    :meth:`from_config` (the default calls ``cls(config)``), :meth:`check` (config checks run even
    when the term is off), :meth:`enabled` (default: ``weight > 0``) and :attr:`clean_layer`.
    """

    @classmethod
    def enabled(cls, config: Any) -> bool:
        """Whether the model builds and computes this term (weight 0: switched off)."""
        return config.weight > 0

    @classmethod
    def check(cls, config: Any, context: ObjectiveContext) -> None:
        """Checks of ``config`` against the encoder, run whether or not the term is on."""

    @classmethod
    def from_config(cls, config: Any, context: ObjectiveContext) -> "Objective":
        return cls(config)

    @property
    def clean_layer(self) -> int | None:
        """The deepest hidden state (0 .. L) this term reads from the clean pass; None: none."""
        return None

    def batch_loss(self, encoded: "EncodedBatch") -> torch.Tensor:
        """The loss term of one encoded batch (``veco2.model.EncodedBatch``: the batch, its
        encoder passes and the model)."""
        raise NotImplementedError


#: Every objective by name, in the order the terms are computed, logged and summed.
OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str, cls: type[Objective], config_cls: type) -> None:
    """Register the objective ``cls`` as ``name``, configured by the dataclass ``config_cls``.

    ``config_cls`` needs a float ``weight`` field (the term's λ; 0 switches it off) and defaults
    for every field.  Its section is ``objectives.NAME`` in every config loaded from now on
    (YAML files and ``objectives.NAME.key=value`` overrides), the model builds
    ``cls.from_config(section, context)`` when the term is enabled, and the trainer logs the term
    as ``loss_NAME`` and adds ``weight · L_NAME`` to the total.  Registering a name twice is an
    error unless it is the same class and config.
    """
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise Veco2Error(f"objective {name!r}: {cls!r} is not a subclass of veco2.objectives.Objective")
    known = OBJECTIVES.get(name)
    if known is not None and (known is not cls or getattr(known, "config_class", None) is not config_cls):
        raise Veco2Error(f"objective {name!r} is already registered ({known.__module__}.{known.__qualname__})")
    add_objective_section(name, config_cls)
    cls.config_class = config_cls
    OBJECTIVES[name] = cls


def unregister_objective(name: str) -> None:
    """Remove a registered objective (not a built-in one) and its config section."""
    if name in BUILTIN_OBJECTIVES:
        raise Veco2Error(f"objective {name!r} is built in and cannot be unregistered")
    OBJECTIVES.pop(name, None)
    remove_objective_section(name)


# ---------------------------------------------------------------------------------------------
# 1. Masked language modelling (MLM / TLM)
# ---------------------------------------------------------------------------------------------


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    rate: float = 0.15,
    mask_prob: float = 0.8,
    random_prob: float = 0.1,
    generator: torch.Generator | None = None,
    segment_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking: choose ``rate`` of the maskable tokens, corrupt them 80/10/10.

    Args:
        input_ids: ``[B, T]`` token ids (not modified).
        special_tokens_mask: ``[B, T]``, 1 where the token is special or padding; those are
            never chosen.
        mask_token_id, vocab_size: the ``<mask>`` id and the vocabulary size (random
            replacements are drawn uniformly from ``[0, vocab_size)``, as in BERT and HF's
            ``DataCollatorForLanguageModeling``; they may hit special ids).
        rate: probability that a maskable token is chosen for prediction.
        mask_prob / random_prob: of the chosen tokens, the share replaced by ``<mask>`` / by a
            random token; the rest (``1 - mask_prob - random_prob``) keep the original token.
        generator: a ``torch.Generator`` on ``input_ids``' device; the result is a deterministic
            function of the inputs and the generator state.
        segment_ids: ``[B, T]`` packed rows (``veco2.data.batching``): 1, 2, ... for the
            sequences of a row, 0 at padding.  ``None``: each row is one sequence.

    Returns:
        ``(masked_input_ids, labels)``: labels hold the original id at chosen positions and
        ``-100`` everywhere else.

    Every *sequence* (a row, or a segment of a packed row) with at least one maskable token gets
    at least one chosen token: where the Bernoulli draw chose none in it, one of its maskable
    positions is chosen uniformly at random (so short sequences always contribute to the loss,
    packed or not; this raises the effective rate slightly on very short inputs).  Unpacked rows
    get exactly the draws they got before packing existed.
    """
    if not 0.0 <= mask_prob + random_prob <= 1.0 or mask_prob < 0 or random_prob < 0:
        raise ValueError("mask_prob and random_prob must be >= 0 with a sum <= 1")
    device = input_ids.device
    maskable = ~special_tokens_mask.bool()

    def uniform() -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=device)

    chosen = (uniform() < rate) & maskable
    # At least one chosen token per sequence that has a maskable token: pick one at random (the
    # maskable position with the highest score of a second uniform draw).
    score = uniform().masked_fill(~maskable, -1.0)
    if segment_ids is None:
        needs_one = ~chosen.any(dim=1) & maskable.any(dim=1)
        chosen[needs_one, score.argmax(dim=1)[needs_one]] = True
    else:
        width = int(segment_ids.max()) + 1 if segment_ids.numel() else 1
        group = (segment_ids.long() + width * torch.arange(input_ids.shape[0], device=device)[:, None]).flatten()
        groups = input_ids.shape[0] * width

        def per_sequence_max(values: torch.Tensor) -> torch.Tensor:
            out = torch.full((groups,), -1.0, device=device, dtype=values.dtype)
            return out.scatter_reduce(0, group, values.flatten(), reduce="amax")

        best = per_sequence_max(score)  # the winning score of each sequence (-1: nothing maskable)
        has_chosen = per_sequence_max(chosen.flatten().to(score.dtype)) > 0
        pick = (score.flatten() == best[group]) & ~has_chosen[group] & maskable.flatten()
        chosen |= pick.view_as(chosen)

    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    action = uniform()
    to_mask = chosen & (action < mask_prob)
    to_random = chosen & (action >= mask_prob) & (action < mask_prob + random_prob)
    random_ids = torch.randint(
        vocab_size, input_ids.shape, generator=generator, device=device, dtype=input_ids.dtype
    )
    masked = input_ids.clone()
    masked[to_mask] = mask_token_id
    masked[to_random] = random_ids[to_random]
    return masked, labels


class MaskedLM(Objective):
    """Masked language modelling with a sparse prediction head.

    Inputs of ``forward``:
        hidden: ``[B, T, H]`` hidden states of the main pass's last layer.
        labels: ``[B, T]`` from :func:`mask_tokens`: target id at masked positions, -100 elsewhere.
        head: the LM head, any module mapping ``[M, H] -> [M, V]`` (dense + norm + decoder).

    Formula, over the set M of masked positions:
        L_mlm = -(1/|M|) Σ_{i∈M} log softmax(head(h_i))[x_i]
    The head runs on the |M| masked positions only (gathered to ``[M, H]``), not on all B·T
    positions: same loss as the full-vocabulary head with ``ignore_index=-100``, at ~15% of the
    output-layer FLOPs and memory at a 15 % rate (benchmarks/RESULTS.md measures the speed-up).  The cross-entropy is computed in
    float32 when the head runs in bf16/fp16.  With no masked token the loss is an exact 0 that
    still depends on ``hidden`` and the head's parameters (so DDP sees every parameter used).

    Options: ``config`` (``veco2.config.MaskedLMConfig``, section ``objectives.mlm``).  Its
    masking options (``rate``, ``mask_prob``, ``random_prob``) and layout options (``bilingual``:
    ``"tlm"``, translation LM, XLM arXiv 1901.07291, the two sides of a parallel pair
    concatenated into one sequence and masked together, or ``"separate"``; ``tlm_*``) are read by
    the collator (``veco2.data.batching``, :func:`mask_tokens`) and the encoder pass; the loss is
    the same either way.  The term is always computed (and logged), also with weight 0.

    References: BERT (arXiv 1810.04805), XLM (arXiv 1901.07291), XLM-R (arXiv 1911.02116).
    """

    def __init__(self, config: MaskedLMConfig | None = None):
        super().__init__()
        self.config = config or MaskedLMConfig()

    @classmethod
    def enabled(cls, config: MaskedLMConfig) -> bool:
        return True

    @classmethod
    def check(cls, config: MaskedLMConfig, context: ObjectiveContext) -> None:
        cross = config.tlm_cross_layers
        if cross is not None and cross > context.num_layers:
            raise Veco2Error(f"objectives.mlm.tlm_cross_layers={cross}: the encoder has only "
                             f"{context.num_layers} layers")

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module) -> torch.Tensor:
        is_masked = labels != IGNORE_INDEX
        logits = head(hidden[is_masked])  # [M, V]: the head only sees masked positions
        if logits.shape[0] == 0:
            return _zero_with_graph(logits)
        return F.cross_entropy(_at_least_fp32(logits), labels[is_masked])

    def batch_loss(self, encoded: "EncodedBatch") -> torch.Tensor:
        hidden, labels = encoded.main.hidden_states[-1], encoded.batch.labels
        head = encoded.model.encoder.lm_head
        if encoded.model.sparse_mlm_head:
            return self(hidden, labels, head)
        # The plain way (kept for benchmarks): logits over the whole vocabulary at every position.
        logits = head(hidden)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


# ---------------------------------------------------------------------------------------------
# 2. Sequence-level contrast
# ---------------------------------------------------------------------------------------------


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Sentence vectors ``[B, H]``: the mean over real tokens (``mask`` = 1) or the first token.

    ``"cls"`` takes position 0 (``<s>`` in XLM-R); the mean ignores padding and special-token
    handling is the caller's choice through ``mask``.
    """
    _check_choice("pooling", mode, {"mean", "cls"})
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` (``[N, ...]``) from every process into ``[world_size·N, ...]``, rank order.

    Identity when torch.distributed is not initialised or has one process.  Every process
    must pass the same N (a ValueError names the sizes otherwise; pad before calling).

    Gradients: the local slice of the result *is* ``x`` in autograd, and backward sums the
    gradient of the gathered tensor over all processes before taking the local slice
    (``torch.distributed.nn.functional.all_gather``).  So the local rows also receive the
    gradient they get by serving as negatives in the other processes' losses.  Replacing the
    local chunk of a plain ``all_gather`` with ``x`` would drop that part, and the update would
    differ from single-process training on the whole batch.  With each process computing the
    mean loss over its own anchors, each process gets ``world_size ×`` the gradient of the global
    mean loss, which DDP's gradient averaging divides back out.
    """
    if not _distributed():
        return x
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    if any(int(s) != x.shape[0] for s in sizes):
        raise ValueError(
            f"gather_with_grad needs equal local batch sizes, got {[int(s) for s in sizes]}"
        )
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def _gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def momentum_update(online: nn.Module, momentum_model: nn.Module, m: float) -> None:
    """MoCo / InfoXLM momentum update: ``θ_k ← m·θ_k + (1 - m)·θ_q`` for every parameter.

    ``momentum_model`` must be a copy of ``online`` (same parameter names and shapes; create
    it with ``copy.deepcopy`` and ``requires_grad_(False)``).  Buffers (e.g. position ids,
    normalisation statistics) are copied over unchanged.  InfoXLM used m = 0.9999.
    """
    online_params = dict(online.named_parameters())
    for name, param in momentum_model.named_parameters():
        param.mul_(m).add_(online_params[name].detach(), alpha=1.0 - m)
    online_buffers = dict(online.named_buffers())
    for name, buf in momentum_model.named_buffers():
        buf.copy_(online_buffers[name])


class SequenceContrastive(Objective):
    """InfoNCE between the two sides of N parallel pairs (sequence-level alignment).

    Inputs of ``forward``:
        src_hidden ``[N, Ts, H]``, src_mask ``[N, Ts]``, tgt_hidden ``[N, Tt, H]``,
        tgt_mask ``[N, Tt]``: hidden states of layer ``layer`` for the two sides of N pairs
        (row i of src is parallel to row i of tgt).
        src_keys, tgt_keys ``[N, D]``: queue mode only: the momentum encoder's vectors of the
        same sentences (from :meth:`embed` of a momentum copy; detached).

    Formula (a reconstruction; VECO 2.0's equations are not public):
        x_i = normalize(proj(pool(src_i))), y_i = normalize(proj(pool(tgt_i)))
        (``similarity="dot"``: without ``normalize``, as InfoXLM's XLCo)
        L_{x→y} = -(1/N) Σ_i log [ exp(x_i·y_i/τ) / Σ_{c∈C_i} exp(x_i·c/τ) ]
        L_seq = (L_{x→y} + L_{y→x}) / 2  if symmetric, else L_{x→y}
    The candidate set C_i depends on ``negatives``:
        "in_batch": every y_j of the local batch (logits ``[N, N]``, positives on the diagonal);
        "gather":   every y_j of every process (logits ``[N_local, N_global]``, positive of row i
                    at column rank·N_local + i; :func:`gather_with_grad`, equal N per process);
        "queue":    InfoXLM XLCo: the positive is the momentum key (tgt_keys_i for x→y,
                    src_keys_i for y→x) and the negatives are the queued keys (logits
                    ``[N, 1 + K_filled]``, positive in column 0).  Only filled queue slots are
                    used, so there are no random keys at the start.  One queue holds both
                    sides' keys.  In training mode, forward enqueues src_keys and tgt_keys
                    (gathered from all processes) *after* computing the loss, unless
                    ``enqueue_in_forward=False`` (then call :meth:`enqueue`).  The queue and its
                    pointer are buffers, so they are saved in ``state_dict`` and checkpoints.
                    The momentum encoder is the model's: a deep copy of the encoder (and of
                    this module, for the projection) updated with :func:`momentum_update`.
                    InfoXLM's XLCo: K = 131,072, momentum 0.9999 (``seq.momentum``), dot
                    product (``similarity="dot"``).  Where this class may depart from it: cosine
                    similarity is the default, and ``symmetric=True`` averages both directions
                    (``symmetric=False``: source sides as queries, target keys only).
    :meth:`negatives_per_anchor` gives the number of negatives each anchor sees (logged by the
    trainer at the start of training).

    Options: ``config`` (``veco2.config.SequenceContrastiveConfig``, section ``objectives.seq``:
    the one place of every option's default), and keyword options of the same names that replace
    its fields, e.g. ``SequenceContrastive(temperature=0.3)``:
        pooling="mean": "mean" over the masked-in tokens (XTREME retrieval's pooling over every
            non-pad token, ``<s>`` and ``</s>`` included, when the trainer's masks include them:
            ``pool_special_tokens``) or "cls" (first token, InfoXLM).  Reconstruction.
        layer=None: hidden layer the model passes; None is the retrieval layer (2/3 of the
            depth, ``veco2.xtreme.retrieval_run.default_layer``), resolved by :meth:`from_config` to
            an index 0 .. L, so the loss shapes the layer that retrieval reads (InfoXLM XLCo used
            layer 8 of 12).
        similarity="cosine": "cosine" (normalised vectors) or "dot" (InfoXLM).
        projection=None: None (contrast the pooled hidden states themselves) or an output dim
            d, with the class option ``projection_kind="linear_tanh"`` (tanh(W h + b)) or "mlp"
            (Linear H→H, ReLU, Linear H→d).
        temperature=0.05: τ_seq.  Reconstruction: 0.05 is the common choice for in-batch
            InfoNCE on cosine similarities (SimCSE; sentence-transformers'
            MultipleNegativesRankingLoss scale 20).  InfoXLM used τ = 0.25 with its queue.
        symmetric=True: average the x→y and y→x directions.
        negatives="gather": "in_batch" | "gather" | "queue" (above); "gather" is "in_batch" in a
            single process.
        queue_size=131072: K for "queue" (InfoXLM's value; small demos use a few hundred).
        encoding="separate": "separate" (each side encoded on its own and unmasked, ``<s> x
            </s>``, as retrieval encodes it; InfoXLM's XLCo) or "joint" (both sides' hidden
            states come from the masked TLM pass over the concatenated pair; the model's masks
            then leave out the positions chosen for MLM, so no ``<mask>`` or corrupted token
            enters a sentence vector).  Read by :meth:`batch_loss`; ``forward`` only sees
            src/tgt hidden states and masks either way.  With "joint" pooled where the sides
            attend to each other, the task has a shortcut; late fusion
            (``mlm.tlm_cross_layers``) keeps the sides apart below the top layers, and pooling
            there costs no extra pass.  Reconstruction, all are offered.
    Class-only options: ``hidden_size`` (H; needed for ``projection`` and for
    ``negatives="queue"``), ``projection_kind`` and ``enqueue_in_forward`` (above).

    :meth:`embed` gives the pooled, projected, L2-normalised vectors (for retrieval).

    References: VECO 2.0 (arXiv 2304.08205), InfoXLM (arXiv 2007.07834), InfoNCE (arXiv
    1807.03748), CLIP (arXiv 2103.00020), MoCo (arXiv 1911.05722).
    """

    def __init__(
        self,
        hidden_size: int | None = None,
        config: SequenceContrastiveConfig | None = None,
        *,
        projection_kind: str = "linear_tanh",
        enqueue_in_forward: bool = True,
        **options: Any,
    ):
        super().__init__()
        config = dataclasses.replace(config or SequenceContrastiveConfig(), **options)
        _check_choice("pooling", config.pooling, {"mean", "cls"})
        _check_choice("similarity", config.similarity, {"cosine", "dot"})
        _check_choice("negatives", config.negatives, {"in_batch", "gather", "queue"})
        _check_choice("encoding", config.encoding, {"separate", "joint"})
        if config.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {config.temperature}")
        self.config = config
        self.pooling = config.pooling
        self.layer = config.layer
        self.temperature = config.temperature
        self.symmetric = config.symmetric
        self.negatives = config.negatives
        self.encoding = config.encoding
        self.enqueue_in_forward = enqueue_in_forward
        self.similarity = config.similarity
        self.queue_size = config.queue_size
        projection = config.projection
        self.projection = _projection_head(hidden_size, projection, projection_kind)
        if self.negatives == "queue":
            dim = projection if projection is not None else hidden_size
            if dim is None:
                raise ValueError('negatives="queue" needs hidden_size (the queue is [K, D])')
            if self.queue_size < 1:
                raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
            self.register_buffer("queue", torch.zeros(self.queue_size, dim))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next write slot
            self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # valid slots

    @staticmethod
    def _layer(config: SequenceContrastiveConfig, context: ObjectiveContext) -> int:
        layer = config.layer if config.layer is not None else context.retrieval_layer
        return context.layer_index("seq.layer", layer)

    @classmethod
    def check(cls, config: SequenceContrastiveConfig, context: ObjectiveContext) -> None:
        cls._layer(config, context)

    @classmethod
    def from_config(cls, config: SequenceContrastiveConfig, context: ObjectiveContext) -> "SequenceContrastive":
        layer, mlm = cls._layer(config, context), context.objectives.mlm
        if config.encoding == "joint" and mlm.bilingual == "tlm":
            layers, cross = context.num_layers, mlm.tlm_cross_layers
            apart = layers - (layers if cross is None else cross)  # last hidden state with the sides apart
            if layer > apart:
                log.warning("objectives.seq.layer=%d pools hidden states in which the two sides of a TLM row "
                            "attend to each other (apart up to %d with tlm_cross_layers=%s): the sequence loss "
                            "can match them through each other", layer, apart, cross)
        return cls(context.hidden_size, dataclasses.replace(config, layer=layer))

    @property
    def clean_layer(self) -> int | None:
        # The momentum encoder (negatives="queue") encodes the clean sides too.
        return self.layer if self.encoding == "separate" or self.negatives == "queue" else None

    def batch_loss(self, encoded: "EncodedBatch") -> torch.Tensor:
        model = encoded.model
        view = model.pair_view(encoded.batch, encoded.main, encoded.clean, self.encoding, self.layer)
        keys = model.momentum_keys(encoded.batch) if model.momentum_encoder is not None else {}
        return self(view.src, view.src_mask, view.tgt, view.tgt_mask, **keys)

    def embed(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[N, T, H]`` hidden states -> ``[N, D]`` pooled, projected vectors (L2-normalised with
        ``similarity="cosine"``)."""
        return self._normalize(self.projection(pool(hidden, mask, self.pooling)))

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.similarity == "cosine" else x

    def negatives_per_anchor(self, local_pairs: int, world_size: int = 1) -> dict[str, int]:
        """How many negatives one anchor sees per direction: ``{"per_process": ..., "global": ...}``.

        ``per_process``: the candidates that come from this process's own micro-batch (its other
        pairs); ``global``: every negative of the loss (all processes' pairs for "gather", the
        full queue for "queue", once it is filled).  Gradient accumulation does not change them:
        each micro-batch is its own loss.
        """
        local = max(local_pairs - 1, 0)
        if self.negatives == "queue":
            return {"per_process": 0, "global": self.queue_size}
        if self.negatives == "gather":
            return {"per_process": local, "global": max(local_pairs * world_size - 1, 0)}
        return {"per_process": local, "global": local}

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` ``[n, D]`` (gathered from all processes) into the ring buffer.

        The oldest keys are overwritten (wrap-around); if more than K keys arrive at once only
        the last K are kept.
        """
        keys = self._normalize(_gather_no_grad(keys.detach())).to(self.queue.dtype)
        size, count = self.queue.shape[0], keys.shape[0]
        # Same end state as writing the keys one by one: only the last `size` survive.
        start = self.queue_ptr + max(count - size, 0)
        kept = keys[-size:]
        slots = (start + torch.arange(kept.shape[0], device=kept.device)) % size
        self.queue[slots] = kept
        self.queue_ptr.copy_((self.queue_ptr + count) % size)
        self.queue_filled.copy_(torch.clamp(self.queue_filled + count, max=size))

    def _info_nce(self, queries, candidates, targets) -> torch.Tensor:
        logits = queries @ candidates.T / self.temperature
        return F.cross_entropy(_at_least_fp32(logits), targets)

    def forward(
        self,
        src_hidden: torch.Tensor,
        src_mask: torch.Tensor,
        tgt_hidden: torch.Tensor,
        tgt_mask: torch.Tensor,
        *,
        src_keys: torch.Tensor | None = None,
        tgt_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embed(src_hidden, src_mask)
        y = self.embed(tgt_hidden, tgt_mask)
        n = x.shape[0]

        if self.negatives == "queue":
            if src_keys is None or tgt_keys is None:
                raise ValueError('negatives="queue" needs src_keys and tgt_keys')
            # A copy: the graph keeps it for backward while enqueue() overwrites the buffer.
            queued = self.queue[: int(self.queue_filled)].clone().to(x.dtype)
            targets = torch.zeros(n, dtype=torch.long, device=x.device)  # positive in column 0

            def direction(queries, positive_keys):
                positive_keys = self._normalize(positive_keys.detach())
                positive = (queries * positive_keys).sum(-1, keepdim=True)
                logits = torch.cat([positive, queries @ queued.T], dim=1) / self.temperature
                return F.cross_entropy(_at_least_fp32(logits), targets)

            loss = direction(x, tgt_keys)
            if self.symmetric:
                loss = (loss + direction(y, src_keys)) / 2
            if self.training and self.enqueue_in_forward:
                self.enqueue(torch.cat([src_keys, tgt_keys]))
            return loss

        if self.negatives == "gather":
            all_x, all_y = gather_with_grad(x), gather_with_grad(y)
            offset = dist.get_rank() * n if _distributed() else 0
        else:
            all_x, all_y, offset = x, y, 0
        targets = torch.arange(n, device=x.device) + offset
        loss = self._info_nce(x, all_y, targets)
        if self.symmetric:
            loss = (loss + self._info_nce(y, all_x, targets)) / 2
        return loss


# ---------------------------------------------------------------------------------------------
# 3. Token-level contrast between dictionary synonyms
# ---------------------------------------------------------------------------------------------


class TokenContrastive(Objective):
    """InfoNCE between dictionary-matched words of a bilingual instance (token-level alignment).

    Inputs of ``forward``:
        src_hidden ``[B, Ts, H]``, tgt_hidden ``[B, Tt, H]``: hidden states of layer ``layer``.
        src_valid ``[B, Ts]``, tgt_valid ``[B, Tt]`` (bool): real tokens (not special, not pad)
            of each side that may serve as negatives.
        spans ``LongTensor [P, 5]``: one row per dictionary-synonym pair,
            ``(batch_index, src_start, src_end, tgt_start, tgt_end)``, ends exclusive, positions
            in the given hidden tensors (subword spans of the two words).
        src_ids ``[B, Ts]``, tgt_ids ``[B, Tt]`` (optional): the (unmasked) token ids at those
            positions, needed by ``exclude_copies``.
        With joint (TLM) encoding the trainer passes the same concatenated hidden tensor as
        src_hidden and tgt_hidden, side-specific valid masks, and spans in concatenated
        positions; the two valid masks must then not overlap.

    Masked input: by default the trainer feeds this loss the clean (unmasked) encoding of the
    bilingual instance (``tok.encoding=separate``: the same clean pass as the sequence term).
    When it reads a masked pass instead (``tok.encoding=joint``, or ``mlm.bilingual=separate``),
    :func:`drop_masked_positions` first removes every position chosen for MLM (``<mask>``,
    random and kept tokens alike) from the valid masks, and every pair with such a position in
    its source or target word, so no masked position is an anchor, a positive or a negative.

    Formula (a reconstruction; VECO 2.0's equations are not public), for pair p in instance b
    with source word vector a_p and target word vector t_p (pooled subwords, projected,
    L2-normalised) and normalised token vectors u:
        ℓ_{s→t}(p) = -log [ exp(a_p·t_p/τ) / (exp(a_p·t_p/τ) + Σ_{j∈N_p} exp(a_p·u_j/τ)) ]
        L_tok = (1/P) Σ_p (ℓ_{s→t}(p) + ℓ_{t→s}(p)) / 2   (or ℓ_{s→t} only if not symmetric)
    ℓ_{t→s} swaps the roles: anchor t_p, positive a_p.  The negatives N_p are individual
    subword token vectors of instance b (not word vectors):
        negatives="other_side" (default): valid tokens on the positive's side;
        negatives="both_sides": also the valid tokens on the anchor's side.
    Never negatives: the positive's and the anchor's own tokens, and more generally the tokens
    of every word the dictionary links to the anchor (other positives of the same anchor span)
    or to the positive (other anchors of the same positive span), so a word with two
    translations in the instance is not pushed away from either.  With
    ``exclude_other_matched=True`` the tokens of every matched word of the instance (on the
    side concerned) are left out as well; the default False keeps them as (hard) negatives:
    the VECO 2.0 abstract separates synonyms "from the other unpaired tokens in a bilingual
    instance".  With ``exclude_copies=True`` (needs the token ids) every other occurrence in the
    instance, on either side, of the same token-id sequence as the anchor's or the positive's
    word is left out too: an unmatched copy of the positive word is the same word, not a
    negative (a false negative otherwise).

    Options: ``config`` (``veco2.config.TokenContrastiveConfig``, section ``objectives.tok``:
    the one place of every option's default), and keyword options of the same names that replace
    its fields, e.g. ``TokenContrastive(temperature=0.2)``:
        subword_pooling="mean": word vector = mean of its subword vectors, or "first" subword.
        negatives="other_side": "other_side" | "both_sides" (above).
        exclude_other_matched=False: above.
        exclude_copies=True: above.
        temperature=0.1: τ_tok (reconstruction; between SimCSE's 0.05 and InfoXLM's 0.25,
            since the negatives are few and from the same sentence).
        symmetric=True: average both directions.
        layer=-1: hidden layer the model passes (:meth:`from_config` resolves it to 0 .. L).
        projection=None: as in :class:`SequenceContrastive` (class option ``projection_kind``);
            the projection is applied to every token before subword pooling.
        encoding="separate": which pass :meth:`batch_loss` reads: "separate" (the clean,
            separately encoded sides) or "joint" (the instance's TLM row in the masked main pass,
            positions chosen for MLM left out, above).
    Class-only option: ``hidden_size`` (H, needed only with a projection).

    Cost: pairs are laid out per instance (``[B, K, ·]`` with K = most pairs in one instance),
    and the similarities come from one batched matmul ``[B, K, D] × [B, D, T]``, so the loss
    costs O(B·K·T·D), small next to an encoder pass; no Python loop over pairs.  It reads K
    with one ``.item()`` (one device sync).  Returns an exact 0 (graph intact) when P == 0.

    References: VECO 2.0 (arXiv 2304.08205), XLM-Align (arXiv 2106.06381), InfoNCE (arXiv
    1807.03748).
    """

    def __init__(
        self,
        hidden_size: int | None = None,
        config: TokenContrastiveConfig | None = None,
        *,
        projection_kind: str = "linear_tanh",
        **options: Any,
    ):
        super().__init__()
        config = dataclasses.replace(config or TokenContrastiveConfig(), **options)
        _check_choice("subword_pooling", config.subword_pooling, {"mean", "first"})
        _check_choice("negatives", config.negatives, {"other_side", "both_sides"})
        _check_choice("encoding", config.encoding, {"separate", "joint"})
        if config.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {config.temperature}")
        self.config = config
        self.pooling = config.subword_pooling
        self.negatives = config.negatives
        self.exclude_other_matched = config.exclude_other_matched
        self.exclude_copies = config.exclude_copies
        self.temperature = config.temperature
        self.symmetric = config.symmetric
        self.layer = config.layer
        self.encoding = config.encoding
        self.projection = _projection_head(hidden_size, config.projection, projection_kind)

    @classmethod
    def check(cls, config: TokenContrastiveConfig, context: ObjectiveContext) -> None:
        context.layer_index("tok.layer", config.layer)

    @classmethod
    def from_config(cls, config: TokenContrastiveConfig, context: ObjectiveContext) -> "TokenContrastive":
        layer = context.layer_index("tok.layer", config.layer)
        return cls(context.hidden_size, dataclasses.replace(config, layer=layer))

    @property
    def clean_layer(self) -> int | None:
        return self.layer if self.encoding == "separate" else None

    def batch_loss(self, encoded: "EncodedBatch") -> torch.Tensor:
        view = encoded.model.pair_view(encoded.batch, encoded.main, encoded.clean, self.encoding, self.layer)
        return self(view.src, view.src_valid, view.tgt, view.tgt_valid, view.spans,
                    src_ids=view.src_ids, tgt_ids=view.tgt_ids)

    @staticmethod
    def _check_spans(spans: torch.Tensor, batch: int, src_len: int, tgt_len: int) -> None:
        b, ss, se, ts, te = spans.unbind(1)
        bad = (b < 0) | (b >= batch) | (ss < 0) | (se <= ss) | (se > src_len)
        bad |= (ts < 0) | (te <= ts) | (te > tgt_len)
        if bad.any():
            row = int(bad.nonzero()[0])
            raise ValueError(
                f"spans row {row} {spans[row].tolist()} is out of range for batch {batch}, "
                f"source length {src_len}, target length {tgt_len} (ends are exclusive)"
            )

    def forward(
        self,
        src_hidden: torch.Tensor,
        src_valid: torch.Tensor,
        tgt_hidden: torch.Tensor,
        tgt_valid: torch.Tensor,
        spans: torch.Tensor,
        *,
        src_ids: torch.Tensor | None = None,
        tgt_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.exclude_copies and (src_ids is None or tgt_ids is None):
            raise ValueError("exclude_copies needs src_ids and tgt_ids")
        if spans.ndim != 2 or spans.shape[1] != 5:
            raise ValueError(f"spans must be [P, 5], got {tuple(spans.shape)}")
        src_tokens = self.projection(src_hidden)
        tgt_tokens = src_tokens if tgt_hidden is src_hidden else self.projection(tgt_hidden)
        if spans.shape[0] == 0:
            return _zero_with_graph(src_tokens, tgt_tokens)
        batch, src_len, tgt_len = src_hidden.shape[0], src_hidden.shape[1], tgt_hidden.shape[1]
        self._check_spans(spans, batch, src_len, tgt_len)

        # Lay the P pairs out per instance: slot (b, k) holds the k-th pair of instance b.
        spans = spans.to(src_hidden.device)
        order = torch.argsort(spans[:, 0], stable=True)
        spans = spans[order]
        counts = torch.bincount(spans[:, 0], minlength=batch)
        slots = int(counts.max())
        first_of_instance = torch.cumsum(counts, 0) - counts
        k_index = torch.arange(spans.shape[0], device=spans.device) - first_of_instance[spans[:, 0]]
        padded = torch.zeros(batch, slots, 4, dtype=torch.long, device=spans.device)
        padded[spans[:, 0], k_index] = spans[:, 1:]
        slot_used = torch.zeros(batch, slots, dtype=torch.bool, device=spans.device)
        slot_used[spans[:, 0], k_index] = True
        src_start, src_end, tgt_start, tgt_end = padded.unbind(-1)  # each [B, K]

        def members(start, end, length):  # [B, K, T]: token t belongs to the word in slot k
            pos = torch.arange(length, device=start.device)
            inside = (pos >= start[..., None]) & (pos < end[..., None])
            return inside & slot_used[..., None]

        src_member = members(src_start, src_end, src_len)
        tgt_member = members(tgt_start, tgt_end, tgt_len)

        def word_vectors(tokens, member, start):  # [B, K, D], L2-normalised
            if self.pooling == "first":
                index = start[..., None].expand(-1, -1, tokens.shape[-1])
                words = torch.gather(tokens, 1, index)
            else:
                weights = member.to(tokens.dtype)
                words = weights @ tokens / weights.sum(-1, keepdim=True).clamp(min=1.0)
            return F.normalize(words, dim=-1)

        src_words = word_vectors(src_tokens, src_member, src_start)
        tgt_words = word_vectors(tgt_tokens, tgt_member, tgt_start)
        src_unit = F.normalize(src_tokens, dim=-1)
        tgt_unit = F.normalize(tgt_tokens, dim=-1)

        # linked[b, k, l]: slot l's word is linked to slot k's word on that side, i.e. it must not
        # be a negative for pair k.  Same src span = same source word (likewise for target).
        both_used = slot_used[:, :, None] & slot_used[:, None, :]
        same_src = (src_start[:, :, None] == src_start[:, None, :]) & (
            src_end[:, :, None] == src_end[:, None, :]
        )
        same_tgt = (tgt_start[:, :, None] == tgt_start[:, None, :]) & (
            tgt_end[:, :, None] == tgt_end[:, None, :]
        )
        same_src, same_tgt = same_src & both_used, same_tgt & both_used

        def excluded(linked, member):  # [B, K, T]: union of the linked slots' word tokens
            if self.exclude_other_matched:
                linked = both_used
            return (linked.to(torch.float32) @ member.to(torch.float32)) > 0

        def direction(anchors, positives, pos_unit, pos_valid, pos_excl, anc_unit, anc_valid,
                      anc_excl):
            positive = (anchors * positives).sum(-1, keepdim=True) / self.temperature
            candidates = [positive]
            pos_sims = anchors @ pos_unit.transpose(1, 2) / self.temperature
            candidates.append(pos_sims.masked_fill(~(pos_valid[:, None, :] & ~pos_excl), -math.inf))
            if self.negatives == "both_sides":
                anc_sims = anchors @ anc_unit.transpose(1, 2) / self.temperature
                candidates.append(
                    anc_sims.masked_fill(~(anc_valid[:, None, :] & ~anc_excl), -math.inf)
                )
            logits = _at_least_fp32(torch.cat(candidates, dim=-1))
            per_pair = torch.logsumexp(logits, dim=-1) - logits[..., 0]  # [B, K]
            return per_pair[slot_used].mean()

        src_valid, tgt_valid = src_valid.bool(), tgt_valid.bool()
        # source -> target: anchor a_k, positive t_k.  On the target side, leave out every target
        # word of the same source word; on the source side, every source word of the same target.
        tgt_excluded, src_excluded = excluded(same_src, tgt_member), excluded(same_tgt, src_member)
        if self.exclude_copies:  # and every copy of either word of the pair, on both sides
            src_ids, tgt_ids = src_ids.to(src_hidden.device), tgt_ids.to(src_hidden.device)
            src_word_ids = _word_ids(src_ids, src_start, src_end)
            tgt_word_ids = _word_ids(tgt_ids, tgt_start, tgt_end)
            for word in (src_word_ids, tgt_word_ids):
                tgt_excluded = tgt_excluded | _occurrences(*word, tgt_ids, tgt_valid)
                src_excluded = src_excluded | _occurrences(*word, src_ids, src_valid)
        loss = direction(
            src_words, tgt_words,
            tgt_unit, tgt_valid, tgt_excluded,
            src_unit, src_valid, src_excluded,
        )
        if self.symmetric:
            backward_loss = direction(
                tgt_words, src_words,
                src_unit, src_valid, src_excluded,
                tgt_unit, tgt_valid, tgt_excluded,
            )
            loss = (loss + backward_loss) / 2
        return loss


def _word_ids(ids: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[B, K, M]`` of the word in each slot (M = longest word; -1 past its end) and
    the word lengths ``[B, K]``."""
    length = end - start
    offsets = torch.arange(max(int(length.max()), 1), device=ids.device)
    positions = (start[..., None] + offsets).clamp(max=ids.shape[1] - 1)
    words = torch.gather(ids[:, None, :].expand(-1, start.shape[1], -1), 2, positions)
    return words.masked_fill(offsets >= length[..., None], -1), length


def _occurrences(words: torch.Tensor, length: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, K, T]``: the tokens of every occurrence, within ``valid`` tokens of ``ids``, of the
    token-id sequence of slot k's word (``words``/``length`` from :func:`_word_ids`)."""
    batch, slots, longest = words.shape
    width = ids.shape[1]
    starts_here = torch.ones(batch, slots, width, dtype=torch.bool, device=ids.device)
    for d in range(longest):  # the word's d-th token at position t + d
        shifted = torch.full_like(ids, -2)
        shifted[:, : width - d] = torch.where(valid[:, d:], ids[:, d:], -2)
        matches = shifted[:, None, :] == words[:, :, d, None]
        starts_here &= matches | (d >= length)[..., None]
    starts_here &= (length > 0)[..., None]
    covered = torch.zeros_like(starts_here)
    for d in range(longest):
        covered[..., d:] |= starts_here[..., : width - d] & (d < length)[..., None]
    return covered


def drop_masked_positions(src_valid: torch.Tensor, tgt_valid: torch.Tensor, spans: torch.Tensor,
                          src_dropped: torch.Tensor, tgt_dropped: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Leave positions chosen for MLM out of the token-level contrast (and its inputs).

    ``src_dropped``/``tgt_dropped`` ``[B, T]``: True at positions chosen for MLM (labels != -100)
    in the src/tgt hidden tensors of :class:`TokenContrastive`.  Returns the valid masks without
    those positions (no masked negative) and the spans whose source and target words contain no
    such position (no masked anchor or positive).
    """
    src_dropped, tgt_dropped = src_dropped.bool(), tgt_dropped.bool()

    def touched(dropped, index, start, end):  # any dropped position in [start, end) of row index
        before = F.pad(torch.cumsum(dropped.long(), dim=1), (1, 0))
        return (before[index, end] - before[index, start]) > 0

    keep = ~touched(src_dropped, spans[:, 0], spans[:, 1], spans[:, 2])
    keep &= ~touched(tgt_dropped, spans[:, 0], spans[:, 3], spans[:, 4])
    return src_valid.bool() & ~src_dropped, tgt_valid.bool() & ~tgt_dropped, spans[keep]


# ---------------------------------------------------------------------------------------------
# 4. Combination
# ---------------------------------------------------------------------------------------------


def combine_losses(
    terms: dict[str, torch.Tensor], weights: dict[str, float]
) -> tuple[torch.Tensor, dict[str, float]]:
    """``total = Σ_name weights[name] · terms[name]``, e.g. L = L_mlm + λ_seq L_seq + λ_tok L_tok.

    Every term needs a weight (a missing one is a ValueError, so a misspelt name cannot
    silently drop a loss); weights of absent terms are ignored; a term with weight 0 is
    reported but left out of the total.  Returns ``(total, values)`` with ``values[name]`` the
    unweighted detached float of each term and ``values["total"]`` the total's.
    """
    if not terms:
        raise ValueError("combine_losses needs at least one term")
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise ValueError(f"no weight for loss term(s) {missing}; weights given: {sorted(weights)}")
    weighted = [weights[name] * term for name, term in terms.items() if weights[name] != 0]
    total = sum(weighted) if weighted else _zero_with_graph(*terms.values())
    values = {name: float(term.detach()) for name, term in terms.items()}
    values["total"] = float(total.detach())
    return total, values


register_objective("mlm", MaskedLM, MaskedLMConfig)
register_objective("seq", SequenceContrastive, SequenceContrastiveConfig)
register_objective("tok", TokenContrastive, TokenContrastiveConfig)

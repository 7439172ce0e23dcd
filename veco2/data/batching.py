"""Batches for pre-training: which instances go into step ``s`` (a pure function of seed, step and
rank, so a resumed run sees the batches the uninterrupted run would have seen) and how
:func:`collate` turns them into a :class:`PretrainingBatch`, packed or padded.  The batch's fields
and the packing rules: ``docs/data.md#batches``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..config import Config
from ..objectives import mask_tokens
from .shards import PretrainingShards


@dataclass(frozen=True)
class SpecialTokens:
    bos: int
    eos: int
    pad: int
    mask: int
    vocab_size: int

    @classmethod
    def of(cls, tokenizer) -> "SpecialTokens":
        return cls(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
                   tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
                   tokenizer.pad_token_id, tokenizer.mask_token_id, len(tokenizer))


@dataclass
class PretrainingBatch:
    """The tensors of one pre-training micro-batch (the tables above); None where not needed.

    A dataclass of tensors: it pickles (``DataLoader`` workers), :meth:`to` moves it to a device
    and :meth:`pin_memory` serves torch's pin-memory thread, which calls it on objects that have
    one.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    segment_ids: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    side_ids: torch.Tensor | None = None
    pair_rows: torch.Tensor | None = None
    pair_index: torch.Tensor | None = None
    joint_src_mask: torch.Tensor | None = None
    joint_tgt_mask: torch.Tensor | None = None
    joint_src_pool: torch.Tensor | None = None
    joint_tgt_pool: torch.Tensor | None = None
    joint_spans: torch.Tensor | None = None
    clean_input_ids: torch.Tensor | None = None
    clean_attention_mask: torch.Tensor | None = None
    clean_segment_ids: torch.Tensor | None = None
    clean_position_ids: torch.Tensor | None = None
    side_src_rows: torch.Tensor | None = None
    side_tgt_rows: torch.Tensor | None = None
    side_src_index: torch.Tensor | None = None
    side_tgt_index: torch.Tensor | None = None
    side_src_mask: torch.Tensor | None = None
    side_tgt_mask: torch.Tensor | None = None
    side_src_valid: torch.Tensor | None = None
    side_tgt_valid: torch.Tensor | None = None
    side_spans: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields that are set, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def _map(self, fn) -> "PretrainingBatch":
        return dataclasses.replace(self, **{name: fn(value) for name, value in self.tensors().items()})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PretrainingBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "PretrainingBatch":
        return self._map(torch.Tensor.pin_memory)

    @staticmethod
    def _gather(values: torch.Tensor, index: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor:
        return values.flatten(0, 1)[index] if index is not None else values[rows]

    def tlm_rows(self, values: torch.Tensor) -> torch.Tensor:
        """``[N, T, ...]`` of the main pass's per-position ``values`` (``[R, W, ...]``) at each
        pair's TLM row: whole rows, or gathered from packed rows."""
        return self._gather(values, self.pair_index, self.pair_rows)

    def src_sides(self, values: torch.Tensor) -> torch.Tensor:
        """``[N, T, ...]`` of ``values`` at each pair's separately encoded source side."""
        return self._gather(values, self.side_src_index, self.side_src_rows)

    def tgt_sides(self, values: torch.Tensor) -> torch.Tensor:
        """``[N, T, ...]`` of ``values`` at each pair's separately encoded target side."""
        return self._gather(values, self.side_tgt_index, self.side_tgt_rows)


def needs_clean_pass(cfg: Config) -> bool:
    """Whether the contrastive terms need unmasked, separately encoded sides."""
    obj = cfg.objectives
    if obj.seq.weight > 0 and obj.seq.negatives == "queue":
        return True  # the momentum encoder encodes clean sides
    if obj.mlm.bilingual == "separate":
        return False  # the separately masked sides of the main pass are reused
    return (obj.seq.weight > 0 and obj.seq.encoding == "separate") or (
        obj.tok.weight > 0 and obj.tok.encoding == "separate")


def epoch_slots(counts: np.ndarray, alpha: float) -> np.ndarray:
    """How many of an epoch's ``counts.sum()`` draws each language gets under exponentially smoothed
    sampling (XLM-R, Conneau et al. 2020, arXiv 1911.02116, §3.1: ``q_l = p_l^α / Σ_k p_k^α`` with
    ``p_l = n_l / N``), rounded by largest remainder so that they sum to ``N``.  α < 1 draws small
    languages more often than their share of the data (repeating them), large ones less often."""
    counts = np.asarray(counts, dtype=np.float64)
    shares = (counts / counts.sum()) ** alpha
    exact = shares / shares.sum() * counts.sum()
    slots = np.floor(exact).astype(np.int64)
    remainder = int(counts.sum()) - int(slots.sum())
    slots[np.argsort(-(exact - slots), kind="stable")[:remainder]] += 1
    return slots


class StepSampler:
    """Instance indices of step ``s`` for process ``rank`` of ``world``."""

    def __init__(self, num_mono: int, num_bi: int, mono_lengths: np.ndarray, bi_lengths: np.ndarray,
                 batch_size: int, bilingual_ratio: float, seed: int, bucket_by_length: bool,
                 bucket_window: int, rank: int = 0, world: int = 1, *, mono_languages: np.ndarray | None = None,
                 bi_languages: np.ndarray | None = None, language_alpha: float = 1.0):
        self.n_bi = round(batch_size * bilingual_ratio) if num_bi else 0
        self.n_mono = batch_size - self.n_bi if num_mono else 0
        if self.n_bi + self.n_mono == 0:
            raise ValueError("empty batches: no monolingual and no bilingual instances")
        self.streams = {"mono": (num_mono, mono_lengths), "bi": (num_bi, bi_lengths)}
        self.seed, self.rank, self.world = seed, rank, world
        self.bucket = bucket_by_length
        self.window = bucket_window if bucket_by_length else 1
        self._cache: dict[tuple[str, int], list[np.ndarray]] = {}
        # Exponentially smoothed language sampling (XLM-R): alpha = 1 samples each language in
        # proportion to its data, which one permutation of all instances per epoch already does.
        self.languages: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
        for kind, langs in (("mono", mono_languages), ("bi", bi_languages)):
            if langs is not None and language_alpha != 1.0 and len(langs):
                members = [np.flatnonzero(langs == lang) for lang in np.unique(langs)]
                counts = np.array([len(m) for m in members])
                self.languages[kind] = (members, epoch_slots(counts, language_alpha))
        self._epochs: dict[tuple[str, int], np.ndarray] = {}

    def _epoch(self, kind: str, epoch: int) -> np.ndarray:
        """The instances of one epoch of a language-smoothed stream: ``slots[l]`` draws of language
        ``l`` (cycling through seeded permutations of its instances), then shuffled together."""
        key = (kind, epoch)
        if key not in self._epochs:
            members, slots = self.languages[kind]
            kind_id = 0 if kind == "mono" else 1
            drawn = []
            for lang, (indices, count) in enumerate(zip(members, slots)):
                positions = np.arange(epoch * count, (epoch + 1) * count)
                for cycle in np.unique(positions // len(indices)):
                    perm = np.random.default_rng([self.seed, kind_id, 3, lang, int(cycle)]).permutation(len(indices))
                    sel = positions[positions // len(indices) == cycle] % len(indices)
                    drawn.append(indices[perm[sel]])
            everything = np.concatenate(drawn)
            order = np.random.default_rng([self.seed, kind_id, 4, epoch]).permutation(len(everything))
            self._epochs = {k: v for k, v in self._epochs.items() if k[0] != kind or k[1] >= epoch - 1}
            self._epochs[key] = everything[order]
        return self._epochs[key]

    def _stream(self, kind: str, start: int, count: int) -> np.ndarray:
        """Elements ``start .. start+count`` of the endless stream of per-epoch permutations."""
        size, _ = self.streams[kind]
        positions = np.arange(start, start + count)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(positions // size):
            sel = positions // size == epoch
            if kind in self.languages:
                out[sel] = self._epoch(kind, int(epoch))[positions[sel] % size]
            else:
                perm = np.random.default_rng([self.seed, 0 if kind == "mono" else 1, int(epoch)]).permutation(size)
                out[sel] = perm[positions[sel] % size]
        return out

    def _window_batches(self, kind: str, window: int, per_step: int) -> list[np.ndarray]:
        key = (kind, window)
        if key not in self._cache:
            global_batch = per_step * self.world
            stream = self._stream(kind, window * self.window * global_batch, self.window * global_batch)
            if self.bucket:
                _, lengths = self.streams[kind]
                stream = stream[np.argsort(lengths[stream], kind="stable")]
            batches = [stream[i * global_batch:(i + 1) * global_batch] for i in range(self.window)]
            order = np.random.default_rng([self.seed, 2, window]).permutation(self.window)
            self._cache = {k: v for k, v in self._cache.items() if k[0] != kind}  # keep one window per kind
            self._cache[key] = [batches[i] for i in order]
        return self._cache[key]

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for kind, per_step in (("mono", self.n_mono), ("bi", self.n_bi)):
            if per_step == 0:
                out.append(np.empty(0, dtype=np.int64))
                continue
            batch = self._window_batches(kind, step // self.window, per_step)[step % self.window]
            out.append(batch[self.rank * per_step:(self.rank + 1) * per_step])
        return out[0], out[1]


def step_seed(seed: int, *parts: int) -> int:
    """A seed derived from ``seed`` and integers such as (step, micro-step, rank)."""
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part) % (2**63)
    return value


class StepBatches(torch.utils.data.Dataset):
    """The trainer's batches as a dataset: item ``i`` is global micro-step ``start + i``.

    Each item is a pure function of its index (sampler, masking generator seeded by
    ``step_seed(seed, step, micro, rank, 7)``), so a ``torch.utils.data.DataLoader`` with
    ``num_workers > 0`` (collation in background processes, pinned memory) yields exactly the
    batches the in-process loop would, in the same order, and a resumed run starts at
    ``start = step · grad_accum``.
    """

    def __init__(self, shards: PretrainingShards, sampler: StepSampler, cfg: Config, special: SpecialTokens,
                 start: int, end: int, rank: int = 0):
        self.shards, self.sampler, self.cfg, self.special = shards, sampler, cfg, special
        self.start, self.end, self.rank = start, end, rank

    def __len__(self) -> int:
        return max(self.end - self.start, 0)

    def __getitem__(self, i: int) -> PretrainingBatch:
        index = self.start + i
        step, micro = divmod(index, self.cfg.training.grad_accum)
        generator = torch.Generator().manual_seed(step_seed(self.cfg.training.seed, step, micro, self.rank, 7))
        mono_idx, bi_idx = self.sampler.indices(index)
        return collate(self.shards, mono_idx, bi_idx, self.cfg, self.special, generator)


def sequence_lengths(batch: PretrainingBatch) -> torch.Tensor:
    """Lengths of the main pass's sequences (rows, or the segments of packed rows), for FLOP counts."""
    if batch.segment_ids is None:
        return batch.attention_mask.sum(1)
    segments = batch.segment_ids
    row = torch.arange(segments.shape[0], device=segments.device)[:, None]
    keys = (segments + (segments.shape[1] + 1) * row)[segments > 0]  # one key per (row, segment)
    return torch.unique(keys, return_counts=True)[1]


def _pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def _content_mask(starts: list[int], lengths: list[int], width: int) -> torch.Tensor:
    positions = torch.arange(width)
    starts_t = torch.as_tensor(starts).unsqueeze(1)
    return (positions >= starts_t) & (positions < starts_t + torch.as_tensor(lengths).unsqueeze(1))


def _spans(pairs_spans: list[np.ndarray], src_shift: list[int], tgt_shift: list[int]) -> torch.Tensor:
    rows = [(i, s0 + src_shift[i], s1 + src_shift[i], t0 + tgt_shift[i], t1 + tgt_shift[i])
            for i, spans in enumerate(pairs_spans) for s0, s1, t0, t1 in spans.tolist()]
    return torch.as_tensor(rows, dtype=torch.long).reshape(len(rows), 5)


def pack_first_fit(lengths: list[int], width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """First-fit-decreasing packing of sequences of ``lengths`` into rows of ``width`` positions.

    Returns ``(row, offset, num_rows)``: sequence ``i`` occupies ``row[i]``, columns
    ``offset[i] .. offset[i] + lengths[i]``.  Deterministic (stable sort by length, ties in input
    order), so a resumed run packs exactly as the uninterrupted one.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    row = np.empty(len(lengths), dtype=np.int64)
    offset = np.empty(len(lengths), dtype=np.int64)
    free: list[int] = []  # free positions left in each open row
    for i in order:
        need = lengths[i]
        for r, space in enumerate(free):
            if space >= need:
                break
        else:
            r = len(free)
            free.append(width)
        row[i], offset[i] = r, width - free[r]
        free[r] -= need
    return row, offset, len(free)


PACK_WIDTH_SLACK = 0.25
"""Rows may be up to 25% wider than the longest sequence: of the widths in that range the one
with the fewest padded positions (rows × width) is used.  With rows exactly as wide as the
longest sequence, the last, half-filled row of a batch of 32 leaves ~6% padding; the search
brings it to ~1% (demo corpus) for a slightly wider attention window."""


def _narrowest_packing(lengths: list[int]) -> tuple[int, tuple[np.ndarray, np.ndarray, int]]:
    longest = max(lengths)
    best = None
    for width in range(longest, int(longest * (1 + PACK_WIDTH_SLACK)) + 1):
        packed = pack_first_fit(lengths, width)
        if best is None or packed[2] * width < best[1][2] * best[0]:
            best = (width, packed)
    return best


@dataclass
class PackedPass:
    """One encoder pass's tensors and where each sequence landed in it."""

    input_ids: torch.Tensor  # [R, W]
    attention_mask: torch.Tensor  # [R, W] 1 = real token
    segment_ids: torch.Tensor | None  # [R, W] (packing only)
    position_ids: torch.Tensor | None
    row: np.ndarray  # per sequence
    offset: np.ndarray
    lengths: list[int]

    def place(self, values: list[list[int]]) -> torch.Tensor:
        """[R, W] per-token ``values`` of every sequence at the sequence's positions (0 elsewhere)."""
        out = torch.zeros(self.input_ids.shape, dtype=torch.long)
        for r, o, v in zip(self.row, self.offset, values):
            out[int(r), int(o):int(o) + len(v)] = torch.as_tensor(v, dtype=torch.long)
        return out

    def index(self, sequences: range | list[int], width: int) -> torch.Tensor:
        """[n, width] flat positions of ``sequences`` (past a sequence's end: its first token)."""
        sel = np.asarray(list(sequences), dtype=np.int64)
        start = self.row[sel] * self.input_ids.shape[1] + self.offset[sel]
        cols = np.arange(width)[None, :]
        inside = cols < np.asarray(self.lengths)[sel][:, None]
        return torch.as_tensor(start[:, None] + np.where(inside, cols, 0))


def _layout(rows: list[list[int]], pad: int, packing: bool) -> PackedPass:
    """Padded rows (one per sequence), or sequences packed into rows with segment and position ids."""
    lengths = [len(r) for r in rows]
    if not packing:
        ids, mask = _pad(rows, pad)
        return PackedPass(ids, mask, None, None, np.arange(len(rows)), np.zeros(len(rows), dtype=np.int64), lengths)
    width, (row, offset, num_rows) = _narrowest_packing(lengths)
    ids = torch.full((num_rows, width), pad, dtype=torch.long)
    segments = torch.zeros((num_rows, width), dtype=torch.long)
    positions = torch.full((num_rows, width), pad, dtype=torch.long)
    segment_of_row = [0] * num_rows
    for i in np.lexsort((offset, row)):  # left to right within each row
        r, o, n = int(row[i]), int(offset[i]), lengths[i]
        segment_of_row[r] += 1
        ids[r, o:o + n] = torch.as_tensor(rows[i], dtype=torch.long)
        segments[r, o:o + n] = segment_of_row[r]
        positions[r, o:o + n] = torch.arange(pad + 1, pad + 1 + n)  # XLM-R: positions start after padding_idx
    return PackedPass(ids, (segments > 0).long(), segments, positions, row, offset, lengths)


def collate(shards: PretrainingShards, mono_idx: np.ndarray, bi_idx: np.ndarray, cfg: Config,
            special: SpecialTokens, generator: torch.Generator) -> PretrainingBatch:
    """Tensors of one batch; masking draws from ``generator`` (seeded per step by the trainer)."""
    bos, eos, pad = special.bos, special.eos, special.pad
    packing = cfg.data.packing
    mono = [[bos, *shards.mono(int(i)).tolist(), eos] for i in mono_idx]
    pairs = [shards.bi(int(i)) for i in bi_idx]
    src = [p[0].tolist() for p in pairs]
    tgt = [p[1].tolist() for p in pairs]
    n = len(pairs)
    tlm = cfg.objectives.mlm.bilingual == "tlm"
    if tlm:
        bilingual_rows = [[bos, *x, eos, eos, *y, eos] for x, y in zip(src, tgt)]
    else:
        bilingual_rows = [[bos, *x, eos] for x in src] + [[bos, *y, eos] for y in tgt]
    main = _layout(mono + bilingual_rows, pad, packing)
    input_ids, attention_mask = main.input_ids, main.attention_mask
    special_mask = (input_ids == bos) | (input_ids == eos) | (input_ids == pad)
    masked, labels = mask_tokens(input_ids, special_mask, mask_token_id=special.mask, vocab_size=special.vocab_size,
                                 rate=cfg.objectives.mlm.rate, mask_prob=cfg.objectives.mlm.mask_prob,
                                 random_prob=cfg.objectives.mlm.random_prob, generator=generator,
                                 segment_ids=main.segment_ids)  # at least one masked token per sequence
    batch = PretrainingBatch(input_ids=masked, attention_mask=attention_mask, labels=labels)
    if packing:
        batch.segment_ids, batch.position_ids = main.segment_ids, main.position_ids
    if tlm and cfg.objectives.mlm.tlm_cross_layers is not None:  # which side of its TLM row a token is on
        batch.side_ids = main.place([[0] * len(row) for row in mono] +
                                    [[1] * (len(x) + 2) + [2] * (len(y) + 2) for x, y in zip(src, tgt)])
    if tlm and cfg.objectives.mlm.tlm_reset_positions:  # XLM: the target side starts again at position 0
        first = pad + 1  # XLM-R: positions start after padding_idx
        batch.position_ids = main.place(
            [list(range(first, first + len(row))) for row in mono] +
            [list(range(first, first + len(x) + 2)) + list(range(first, first + len(y) + 2)) for x, y in zip(src, tgt)])
    if n == 0 or (cfg.objectives.seq.weight == 0 and cfg.objectives.tok.weight == 0):
        return batch

    src_len, tgt_len = [len(x) for x in src], [len(y) for y in tgt]
    first_pair = len(mono)
    if tlm:
        width = max(main.lengths[first_pair:]) if packing else input_ids.shape[1]
        tgt_start = [lx + 3 for lx in src_len]
        if packing:
            batch.pair_index = main.index(range(first_pair, first_pair + n), width)
        else:
            batch.pair_rows = torch.arange(first_pair, first_pair + n)
        batch.joint_src_mask = _content_mask([1] * n, src_len, width)
        batch.joint_tgt_mask = _content_mask(tgt_start, tgt_len, width)
        batch.joint_src_pool = _content_mask([0] * n, [lx + 2 for lx in src_len], width)
        batch.joint_tgt_pool = _content_mask([lx + 2 for lx in src_len], [ly + 2 for ly in tgt_len], width)
        batch.joint_spans = _spans([p[2] for p in pairs], [1] * n, tgt_start)
    if needs_clean_pass(cfg):
        clean = _layout([[bos, *x, eos] for x in src] + [[bos, *y, eos] for y in tgt], pad, packing)
        batch.clean_input_ids, batch.clean_attention_mask = clean.input_ids, clean.attention_mask
        if packing:
            batch.clean_segment_ids, batch.clean_position_ids = clean.segment_ids, clean.position_ids
        sides, side_pass = range(2 * n), clean
    elif not tlm:
        sides, side_pass = range(first_pair, first_pair + 2 * n), main
    else:
        return batch  # only joint views are used
    src_sides, tgt_sides = list(sides)[:n], list(sides)[n:]
    if packing:
        width = max(side_pass.lengths[i] for i in sides)
        batch.side_src_index = side_pass.index(src_sides, width)
        batch.side_tgt_index = side_pass.index(tgt_sides, width)
        batch.side_src_mask = _content_mask([0] * n, [lx + 2 for lx in src_len], width)
        batch.side_tgt_mask = _content_mask([0] * n, [ly + 2 for ly in tgt_len], width)
    else:
        side_rows, side_mask = torch.as_tensor(list(sides)), side_pass.attention_mask
        width = side_mask.shape[1]
        batch.side_src_rows, batch.side_tgt_rows = side_rows[:n], side_rows[n:]
        batch.side_src_mask, batch.side_tgt_mask = side_mask[side_rows[:n]], side_mask[side_rows[n:]]
    batch.side_src_valid = _content_mask([1] * n, src_len, width)
    batch.side_tgt_valid = _content_mask([1] * n, tgt_len, width)
    batch.side_spans = _spans([p[2] for p in pairs], [1] * n, [1] * n)
    return batch

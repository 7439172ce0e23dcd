"""Random token ids in the shape of veco2's pre-training shards: ``veco2 bench --data synthetic``
(controlled sequence lengths, no corpus or tokenizer needed) and the tests of the batching code."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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


"""Pre-tokenized, memory-mapped pre-training shards: built once per (corpus, tokenizer, languages,
max_length), read by the trainer without tokenizing again; cuts and skips are counted in the
manifest.  Layout: ``docs/data.md#shards``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import Veco2Error
from ..fileio import atomic_write, read_json, write_json
from ..provenance import provenance, sha256_file
from .corpus import Corpus
from .synonyms import MiningStats, SynonymMiner, load_spans, mine_corpus, pack_spans, save_spans

log = logging.getLogger(__name__)

SHARD_FORMAT_VERSION = 1


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, "wb") as handle:
        np.save(handle, array)


def _pack(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sequences], out=offsets[1:])
    tokens = np.fromiter((t for s in sequences for t in s), dtype=np.int32, count=int(offsets[-1]))
    return tokens, offsets


def build_shards(corpus: Corpus, tokenizer, languages: list[str], max_length: int, out_dir: str | Path,
                 batch_size: int = 1024) -> dict:
    """Tokenize monolingual text and mine + tokenize parallel pairs of ``languages`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = max_length - 2  # room for <s> and </s>
    started = time.time()
    manifest: dict = {"format_version": SHARD_FORMAT_VERSION, "languages": ["en", *languages],
                      "max_length": max_length, "mono": {}, "bi": {}, "skipped": {}}

    mono_seqs: list[list[int]] = []
    mono_lang: list[int] = []
    for lang_id, lang in enumerate(manifest["languages"]):
        texts = corpus.monolingual(lang)
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        kept = [seq[:limit] for seq in ids if seq]
        manifest["mono"][lang] = {"sentences": len(kept), "empty_after_tokenization": len(ids) - len(kept),
                                  "truncated": sum(len(seq) > limit for seq in ids)}
        mono_seqs.extend(kept)
        mono_lang.extend([lang_id] * len(kept))

    src_seqs: list[list[int]] = []
    tgt_seqs: list[list[int]] = []
    bi_lang: list[int] = []
    bi_spans: list[list[tuple[int, int, int, int]]] = []
    for lang_id, lang in enumerate(manifest["languages"]):
        if lang == "en":
            continue
        pairs = corpus.parallel(lang, "train")
        dict_path = corpus.dictionary_path(lang)
        miner = corpus.dictionary(lang) if dict_path else SynonymMiner([], "en", lang)
        stats = MiningStats()
        empty = 0
        for mined in mine_corpus(pairs, miner, tokenizer, batch_size=batch_size, max_length=limit, stats=stats):
            if not mined.src_ids or not mined.tgt_ids:
                empty += 1
                continue
            src_seqs.append(mined.src_ids)
            tgt_seqs.append(mined.tgt_ids)
            bi_spans.append(mined.spans)
            bi_lang.append(lang_id)
        manifest["bi"][lang] = {**stats.as_dict(), "empty_after_tokenization": empty,
                                "dictionary": str(dict_path) if dict_path else None,
                                "dictionary_skipped_entries": miner.skipped_entries,
                                "dictionary_duplicate_entries": miner.duplicate_entries}
        if stats.truncated:
            log.warning("en-%s: %d parallel pairs cut to data.max_length=%d tokens per side (before dictionary "
                        "matching)", lang, stats.truncated, max_length)
        if not dict_path:
            log.warning("no dictionary for en-%s: the token-level loss sees no pairs of this language", lang)
    if not mono_seqs or not src_seqs:
        raise Veco2Error(f"{corpus.root}: no usable monolingual or parallel training text for {languages}")

    for name, seqs in (("mono", mono_seqs), ("bi.src", src_seqs), ("bi.tgt", tgt_seqs)):
        tokens, offsets = _pack(seqs)
        _save_npy(out_dir / f"{name}.tokens.npy", tokens)
        _save_npy(out_dir / f"{name}.offsets.npy", offsets)
    _save_npy(out_dir / "mono.lang.npy", np.asarray(mono_lang, dtype=np.int16))
    _save_npy(out_dir / "bi.lang.npy", np.asarray(bi_lang, dtype=np.int16))
    spans, span_offsets = pack_spans(bi_spans)
    save_spans(out_dir / "bi.spans.npz", spans, span_offsets)

    manifest["skipped"] = corpus.skipped()
    manifest["corpus"] = str(corpus.root)
    manifest["tokenizer_vocab_size"] = len(tokenizer)
    manifest["seconds"] = round(time.time() - started, 2)
    manifest["provenance"] = provenance()
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(out_dir.glob("*.np[yz]"))}
    write_json(out_dir / "manifest.json", manifest)  # written last: its presence marks complete shards
    return manifest


@dataclass
class PretrainingShards:
    """Memory-mapped view of a shard directory."""

    root: Path
    manifest: dict
    mono_tokens: np.ndarray
    mono_offsets: np.ndarray
    src_tokens: np.ndarray
    src_offsets: np.ndarray
    tgt_tokens: np.ndarray
    tgt_offsets: np.ndarray
    spans: np.ndarray
    span_offsets: np.ndarray

    @classmethod
    def open(cls, root: str | Path) -> "PretrainingShards":
        root = Path(root)
        if not (root / "manifest.json").exists():
            raise Veco2Error(f"{root}: no complete shards here (manifest.json missing)")
        manifest = read_json(root / "manifest.json")
        if manifest.get("format_version") != SHARD_FORMAT_VERSION:
            raise Veco2Error(f"{root}/manifest.json: shard format {manifest.get('format_version')}, "
                             f"this veco2 reads {SHARD_FORMAT_VERSION}; rebuild the shards")

        def load(name: str) -> np.ndarray:
            try:
                return np.load(root / name, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:
                raise Veco2Error(f"{root / name}: unreadable shard file ({err}); rebuild the shards") from None

        spans, span_offsets = load_spans(root / "bi.spans.npz")
        return cls(root, manifest, load("mono.tokens.npy"), load("mono.offsets.npy"),
                   load("bi.src.tokens.npy"), load("bi.src.offsets.npy"),
                   load("bi.tgt.tokens.npy"), load("bi.tgt.offsets.npy"), spans, span_offsets)

    @property
    def num_mono(self) -> int:
        return len(self.mono_offsets) - 1

    @property
    def num_bi(self) -> int:
        return len(self.src_offsets) - 1

    def mono(self, i: int) -> np.ndarray:
        return self.mono_tokens[self.mono_offsets[i]:self.mono_offsets[i + 1]]

    def bi(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (self.src_tokens[self.src_offsets[i]:self.src_offsets[i + 1]],
                self.tgt_tokens[self.tgt_offsets[i]:self.tgt_offsets[i + 1]],
                self.spans[self.span_offsets[i]:self.span_offsets[i + 1]])

    def mono_lengths(self) -> np.ndarray:
        return np.diff(self.mono_offsets)

    def bi_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets) + np.diff(self.tgt_offsets)

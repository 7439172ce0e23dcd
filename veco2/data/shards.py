"""Pre-tokenized, memory-mapped pre-training shards, built once per (corpus and sources, tokenizer,
languages, max_length) and read by the trainer without tokenizing again.  The records of each
(role, language) stream are cut into fixed-size chunks in input order, tokenized and mined in a pool
of worker processes into part files (``parts/``; a killed build resumes from its complete parts),
then concatenated by streaming into the shard files, byte-identical whatever the number of
workers.  Cuts, skips and each part's sources are counted in the manifest.  Layout:
``docs/data.md#shards``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import Veco2Error
from ..fileio import fault_point, read_json, remove_stale_temporaries, try_lock, write_json
from ..provenance import provenance, sha256_file
from .sources import CorpusSources, RecordFilter
from .synonyms import (
    SPANS_FORMAT_VERSION, MiningStats, SynonymMiner, backend_of, load_spans, mine_corpus, pack_spans,
    savez_reproducible,
)

log = logging.getLogger(__name__)

SHARD_FORMAT_VERSION = 1
PARTS_DIR = "parts"


@dataclass
class ChunkTask:
    """One chunk of a stream: what a worker tokenizes (mono) or mines (parallel) into one part."""

    name: str
    role: str
    lang: str
    records: list
    dictionary: str | None = None
    parts_dir: str = ""
    info: dict = field(default_factory=dict)  # provenance and filter counts, copied into the part's JSON


def build_shards(sources: CorpusSources, tokenizer, languages: list[str], max_length: int, out_dir: str | Path,
                 data: DataConfig | None = None, batch_size: int = 1024) -> dict:
    """Tokenize monolingual text and mine + tokenize parallel pairs of ``languages`` into ``out_dir``
    (``data``: the filters, ``prepare_workers`` and ``prepare_chunk_size``; defaults if None)."""
    data = data if data is not None else DataConfig()
    out_dir = Path(out_dir)
    parts_dir = out_dir / PARTS_DIR
    parts_dir.mkdir(parents=True, exist_ok=True)
    lock = try_lock(out_dir / ".prepare.lock")  # one preparation per directory; released with the process
    try:
        if (out_dir / "manifest.json").exists():  # another preparation finished while this one waited
            return read_json(out_dir / "manifest.json")
        for directory in (out_dir, parts_dir):
            for name in remove_stale_temporaries(directory):
                log.info("%s: removed %s left by an interrupted preparation", directory, name)
        return _build(sources, tokenizer, languages, max_length, out_dir, parts_dir, data, batch_size)
    finally:
        lock.close()


def _build(sources: CorpusSources, tokenizer, languages, max_length, out_dir: Path, parts_dir: Path,
           data: DataConfig, batch_size: int) -> dict:
    limit = max_length - 2  # room for <s> and </s>
    started = time.time()
    all_languages = ["en", *languages]
    backend_json = backend_of(tokenizer).to_str()
    settings = {"format_version": SHARD_FORMAT_VERSION, "tokenizer_sha256": hashlib.sha256(backend_json.encode()).hexdigest(),
                "languages": all_languages, "max_length": max_length, "chunk_size": data.prepare_chunk_size,
                "filters": _filters(data), "corpus": str(sources.corpus.root) if sources.corpus else None,
                "sources": sources.describe(), "batch_size": batch_size}
    _start_parts(parts_dir, settings)
    skipped: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    dictionaries: dict[str, str | None] = {}
    runner = _ChunkRunner(data.prepare_workers, (backend_json, limit, batch_size))
    try:
        for role, lang in [("mono", lang) for lang in all_languages] + [("parallel", lang) for lang in languages]:
            if role == "parallel":
                path = sources.dictionary_path(lang)
                dictionaries[lang] = str(path) if path is not None else None
            for task in _chunks(sources, role, lang, data, skipped, dictionaries.get(lang)):
                task.parts_dir = str(parts_dir)
                runner.submit(task, _complete_part(parts_dir, task))
        metas = runner.finish()
    finally:
        runner.close()
    manifest: dict = {"format_version": SHARD_FORMAT_VERSION, "languages": all_languages, "max_length": max_length,
                      "mono": {}, "bi": {}, "skipped": {}}
    for lang in all_languages:
        chunks = [m for m in metas if m["role"] == "mono" and m["lang"] == lang]
        manifest["mono"][lang] = {key: sum(m["counts"][key] for m in chunks)
                                  for key in ("sentences", "empty_after_tokenization", "truncated")}
    for lang in languages:
        manifest["bi"][lang] = _bi_entry(lang, [m for m in metas if m["role"] == "parallel" and m["lang"] == lang],
                                         dictionaries[lang], max_length)
    if not any(m["counts"]["sentences"] for m in metas if m["role"] == "mono") or \
            not any(m["counts"]["pairs_kept"] for m in metas if m["role"] == "parallel"):
        where = sources.corpus.root if sources.corpus is not None else "data.sources"
        raise Veco2Error(f"{where}: no usable monolingual or parallel training text for {languages}")

    _concatenate(out_dir, parts_dir, metas, {lang: i for i, lang in enumerate(all_languages)})
    reader_skips = sources.skipped()
    for label, counts in skipped.items():
        reader_skips[label] = {**reader_skips.get(label, {}), **dict(counts)}
    manifest["skipped"] = reader_skips
    manifest["corpus"] = settings["corpus"]
    manifest["sources"] = settings["sources"]
    manifest["filters"] = settings["filters"]
    manifest["tokenizer_vocab_size"] = len(tokenizer)
    manifest["seconds"] = round(time.time() - started, 2)
    manifest["prepare"] = {"workers": data.prepare_workers, "chunk_size": data.prepare_chunk_size,
                           "parts_reused": runner.reused, "parts_built": runner.built}
    manifest["parts"] = [{"part": m["name"], "role": m["role"], "language": m["lang"], "records": m["records"],
                          "sources": m["sources"], "sha256": m["sha256"]} for m in metas]
    manifest["provenance"] = provenance()
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(out_dir.glob("*.np[yz]"))}
    write_json(out_dir / "manifest.json", manifest)  # written last: its presence marks complete shards
    shutil.rmtree(parts_dir)  # every part is in the shard files now; the manifest keeps their provenance
    return manifest


def _filters(data: DataConfig) -> dict:
    return {"dedup": data.dedup, "max_chars": data.max_chars, "min_script_share": data.min_script_share}


def _start_parts(parts_dir: Path, settings: dict) -> None:
    """Keep the parts of an interrupted preparation only if it had the same settings."""
    marker = parts_dir / "settings.json"
    if marker.exists() and read_json(marker) != settings:
        log.warning("%s: parts of a preparation with other settings; starting again", parts_dir)
        for path in parts_dir.iterdir():
            path.unlink()
    if not marker.exists():
        write_json(marker, settings)


def _bi_entry(lang: str, chunks: list[dict], dictionary: str | None, max_length: int) -> dict:
    stats = MiningStats()
    for m in chunks:
        stats.add(MiningStats(**m["mining"]))
    entry = {**stats.as_dict(), "empty_after_tokenization": sum(m["counts"]["empty_after_tokenization"] for m in chunks),
             "dictionary": dictionary}
    if chunks:
        entry.update(chunks[0]["dictionary_counts"])
    else:
        entry.update(_dictionary_counts(_load_miner(lang, dictionary)))
    if stats.truncated:
        log.warning("en-%s: %d parallel pairs cut to data.max_length=%d tokens per side (before dictionary "
                    "matching)", lang, stats.truncated, max_length)
    if not dictionary:
        log.warning("no dictionary for en-%s: the token-level loss sees no pairs of this language", lang)
    return entry


# ---------------------------------------------------------------------------------------------
# Reader stage (this process, in input order): records -> filtered -> fixed-size chunks
# ---------------------------------------------------------------------------------------------


def _chunks(sources: CorpusSources, role: str, lang: str, data: DataConfig, skipped: dict,
            dictionary: str | None):
    """The chunks of one stream: ``prepare_chunk_size`` kept records each, in input order, with the
    sources and record numbers they came from and the filter skips met on the way."""
    size = data.prepare_chunk_size
    stream = sources.stream(role, lang)
    keep = RecordFilter(role, lang, data)
    records: list = []
    spans: list[list] = []  # [source label, first record number, last record number]
    filtered: collections.Counter = collections.Counter()
    index = first = 0
    for record, label, number in stream.read(sources.stats.append):
        reason = keep.reason(record) if keep.active else None
        if reason is not None:
            skipped[label][reason] += 1
            filtered[reason] += 1
            continue
        records.append(record)
        if spans and spans[-1][0] == label:
            spans[-1][2] = number
        else:
            spans.append([label, number, number])
        if len(records) == size:
            yield _task(role, lang, index, first, records, spans, filtered, dictionary)
            index, first = index + 1, first + size
            records, spans, filtered = [], [], collections.Counter()
    if records:
        yield _task(role, lang, index, first, records, spans, filtered, dictionary)
    if keep.active and any(count for counts in skipped.values() for count in counts.values()):
        log.info("%s %s: filters skipped %s", role, lang,
                 {label: dict(counts) for label, counts in skipped.items() if counts})


def _task(role, lang, index, first, records, spans, filtered, dictionary) -> ChunkTask:
    digest = hashlib.blake2b(digest_size=16)
    for record in records:
        digest.update(("\x1f".join(record) if role == "parallel" else record).encode() + b"\x1e")
    return ChunkTask(f"{role}-{lang}-{index:06d}", role, lang, records, dictionary,
                     info={"records": [first, first + len(records)], "sources": spans, "filtered": dict(filtered),
                      "digest": digest.hexdigest(), "dictionary": dictionary})


def _complete_part(parts_dir: Path, task: ChunkTask) -> dict | None:
    """The metadata of the part of ``task`` if a complete one with the same records is on disk."""
    meta_path = parts_dir / f"{task.name}.json"
    data_path = parts_dir / f"{task.name}.npz"
    if not meta_path.exists() or not data_path.exists():
        return None
    meta = read_json(meta_path)
    if meta.get("digest") != task.info["digest"] or meta.get("sha256") != sha256_file(data_path):
        log.warning("%s: does not hold the records read now; building it again", data_path)
        return None
    return meta


# ---------------------------------------------------------------------------------------------
# Worker stage: a chunk -> one part file (+ its JSON, written last)
# ---------------------------------------------------------------------------------------------


class _ChunkRunner:
    """Runs chunk tasks in this process (1 worker) or a process pool, at most ``2 x workers`` chunks in
    flight; results come back in submission order."""

    def __init__(self, workers: int, init_args: tuple):
        self.workers = workers
        self.pool = None
        self.in_flight: collections.deque = collections.deque()
        self.metas: list[dict] = []
        self.reused = self.built = 0
        self.progress = _Progress()
        if workers == 1:
            _init_worker(*init_args, single=True)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # "spawn": forking after the tokenizer's thread pool has run can deadlock it.
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=init_args)

    def submit(self, task: ChunkTask, done: dict | None) -> None:
        if done is not None:
            self.reused += 1
            self.in_flight.append(done)
        elif self.pool is None:
            self.built += 1
            self.in_flight.append(_process_chunk(task))
        else:
            self.built += 1
            self.in_flight.append(self.pool.submit(_process_chunk, task))
        while len(self.in_flight) > 2 * self.workers:
            self._collect()

    def _collect(self) -> None:
        item = self.in_flight.popleft()
        meta = item if isinstance(item, dict) else item.result()
        self.progress.update(meta)
        self.metas.append(meta)

    def finish(self) -> list[dict]:
        while self.in_flight:
            self._collect()
        self.progress.close()
        return self.metas

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        self.progress.close()


class _Progress:
    """tqdm bars of sentences/s and pairs/s (on a terminal), and one log line per role at the end."""

    def __init__(self):
        from tqdm import tqdm

        self.bars = {"mono": tqdm(desc="monolingual", unit=" sentences", disable=None, leave=False),
                     "parallel": tqdm(desc="parallel", unit=" pairs", disable=None, leave=False)}
        self.started = time.monotonic()
        self.counts: collections.Counter = collections.Counter()

    def update(self, meta: dict) -> None:
        role = meta["role"]
        n = meta["records"][1] - meta["records"][0]
        self.counts[role] += n
        if self.bars:
            self.bars[role].update(n)

    def close(self) -> None:
        if not self.bars:
            return
        for bar in self.bars.values():
            bar.close()
        self.bars = {}
        elapsed = time.monotonic() - self.started
        for role, unit in (("mono", "sentences"), ("parallel", "pairs")):
            if self.counts[role]:  # over the whole preparation: the roles' chunks run interleaved
                log.info("prepared %d %s (%.0f %s/s over the %.1f s of the whole preparation)", self.counts[role],
                         unit, self.counts[role] / max(elapsed, 1e-9), unit, elapsed)


_WORKER: dict = {}


def _init_worker(backend_json: str, limit: int, batch_size: int, single: bool = False) -> None:
    from tokenizers import Tokenizer

    if not single:  # each worker process tokenizes on one thread: the pool is the parallelism
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.clear()
    _WORKER.update(backend=Tokenizer.from_str(backend_json), limit=limit, batch_size=batch_size, miners={})


def _load_miner(lang: str, dictionary: str | None) -> SynonymMiner:
    return SynonymMiner.from_file(dictionary, "en", lang) if dictionary else SynonymMiner([], "en", lang)


def _dictionary_counts(miner: SynonymMiner) -> dict:
    return {"dictionary_skipped_entries": miner.skipped_entries, "dictionary_duplicate_entries": miner.duplicate_entries}


def _process_chunk(task: ChunkTask) -> dict:
    """Tokenize (mono) or mine (parallel) one chunk into ``parts/NAME.npz``; its JSON last."""
    backend, limit = _WORKER["backend"], _WORKER["limit"]
    if task.role == "mono":
        ids = [encoding.ids for encoding in backend.encode_batch(task.records, add_special_tokens=False)]
        kept = [seq[:limit] for seq in ids if seq]
        tokens, offsets = _pack(kept)
        arrays = {"tokens": tokens, "offsets": offsets}
        counts = {"sentences": len(kept), "empty_after_tokenization": len(ids) - len(kept),
                  "truncated": sum(len(seq) > limit for seq in ids)}
        extra = {}
    else:
        miners = _WORKER["miners"]
        if task.lang not in miners:
            miners[task.lang] = _load_miner(task.lang, task.dictionary)
        stats = MiningStats()
        src, tgt, spans, empty = [], [], [], 0
        for mined in mine_corpus(task.records, miners[task.lang], backend, batch_size=_WORKER["batch_size"],
                                 max_length=limit, stats=stats):
            if not mined.src_ids or not mined.tgt_ids:
                empty += 1
                continue
            src.append(mined.src_ids)
            tgt.append(mined.tgt_ids)
            spans.append(mined.spans)
        (src_tokens, src_offsets), (tgt_tokens, tgt_offsets) = _pack(src), _pack(tgt)
        span_rows, span_offsets = pack_spans(spans)
        arrays = {"src_tokens": src_tokens, "src_offsets": src_offsets, "tgt_tokens": tgt_tokens,
                  "tgt_offsets": tgt_offsets, "spans": span_rows, "span_offsets": span_offsets}
        counts = {"pairs_kept": len(src), "empty_after_tokenization": empty}
        extra = {"mining": dataclasses.asdict(stats), "dictionary_counts": _dictionary_counts(miners[task.lang])}
    parts_dir = Path(task.parts_dir)
    data_path = parts_dir / f"{task.name}.npz"
    savez_reproducible(data_path, **arrays)
    meta = {"name": task.name, "role": task.role, "lang": task.lang, **task.info, "counts": counts,
            "sizes": {name: list(array.shape) for name, array in arrays.items()}, **extra,
            "sha256": sha256_file(data_path)}
    write_json(parts_dir / f"{task.name}.json", meta)  # last: marks the part complete
    fault_point(f"prepare-part:{task.name}")  # crash tests: a complete part on disk, the next not yet
    return meta


def _pack(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sequences], out=offsets[1:])
    tokens = np.fromiter((t for s in sequences for t in s), dtype=np.int32, count=int(offsets[-1]))
    return tokens, offsets


# ---------------------------------------------------------------------------------------------
# Concatenation: parts -> shard files, streamed (one part in memory at a time)
# ---------------------------------------------------------------------------------------------


def _concatenate(out_dir: Path, parts_dir: Path, metas: list[dict], lang_ids: dict[str, int]) -> None:
    mono = [m for m in metas if m["role"] == "mono"]
    bi = [m for m in metas if m["role"] == "parallel"]

    def parts(chosen):
        for meta in chosen:
            with np.load(parts_dir / f"{meta['name']}.npz", allow_pickle=False) as arrays:
                yield meta, {name: arrays[name] for name in arrays.files}

    def count(meta: dict, key: str) -> int:
        return meta["sizes"][key][0]

    def flat(chosen, name: str, tokens_key: str, offsets_key: str, scratch: Path | None = None) -> None:
        """Sequences of ``chosen`` parts: ``NAME.tokens.npy`` + ``NAME.offsets.npy`` (offsets shifted)."""
        folder = scratch or out_dir
        width = (4,) if tokens_key == "spans" else ()
        with _NpyWriter(folder / f"{name}.tokens.npy", np.int32, (sum(count(m, tokens_key) for m in chosen), *width)) \
                as tokens, _NpyWriter(folder / f"{name}.offsets.npy", np.int64,
                                      (sum(count(m, offsets_key) - 1 for m in chosen) + 1,)) as offsets:
            at = 0
            offsets.write(np.zeros(1, dtype=np.int64))
            for _meta, arrays in parts(chosen):
                tokens.write(arrays[tokens_key])
                offsets.write(arrays[offsets_key][1:] + at)
                at += len(arrays[tokens_key])

    def languages(chosen, name: str, key: str) -> None:
        with _NpyWriter(out_dir / name, np.int16, (sum(count(m, key) - 1 for m in chosen),)) as lang:
            for meta in chosen:
                lang.write(np.full(count(meta, key) - 1, lang_ids[meta["lang"]], dtype=np.int16))

    flat(mono, "mono", "tokens", "offsets")
    flat(bi, "bi.src", "src_tokens", "src_offsets")
    flat(bi, "bi.tgt", "tgt_tokens", "tgt_offsets")
    languages(mono, "mono.lang.npy", "offsets")
    languages(bi, "bi.lang.npy", "src_offsets")
    # bi.spans.npz: the spans and their offsets streamed into .npy files, then copied into the archive
    with tempfile.TemporaryDirectory(prefix=".spans.", suffix=".tmp", dir=out_dir) as scratch:
        flat(bi, "spans", "spans", "span_offsets", Path(scratch))
        np.save(Path(scratch) / "format_version.npy", np.int64(SPANS_FORMAT_VERSION))
        savez_reproducible(out_dir / "bi.spans.npz", spans=Path(scratch) / "spans.tokens.npy",
                           offsets=Path(scratch) / "spans.offsets.npy",
                           format_version=Path(scratch) / "format_version.npy")


class _NpyWriter:
    """A ``.npy`` file of a known dtype and shape written piece by piece (the bytes of ``np.save``),
    renamed into place when the block ends without an error and every row was written."""

    def __init__(self, path: Path, dtype, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape = path, np.dtype(dtype), shape
        self.rows = 0

    def __enter__(self) -> "_NpyWriter":
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.handle = os.fdopen(fd, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self.handle, header)
        return self

    def write(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=self.dtype)
        self.handle.write(array.tobytes())
        self.rows += len(array)

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None and self.rows != self.shape[0]:
                raise Veco2Error(f"{self.path}: {self.rows} rows written, {self.shape[0]} expected")
            if kind is None:
                self.handle.flush()
                os.fsync(self.handle.fileno())
        except BaseException:
            kind = True
            raise
        finally:
            self.handle.close()
            if kind is None:
                os.replace(self.tmp, self.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.tmp)


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

    def languages(self, kind: str) -> np.ndarray:
        """The language id (index into ``manifest["languages"]``) of each ``mono`` or ``bi`` instance."""
        return np.load(self.root / f"{kind}.lang.npy", mmap_mode="r", allow_pickle=False)

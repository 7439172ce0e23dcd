"""A pre-training corpus on disk (``mono/``, ``parallel/``, ``dict/``, in the layout of the embedded
demo corpus; each part in one of its formats), read through :mod:`veco2.data.readers` as streams.
``corpus="demo"`` is the corpus shipped in the package.  Layout: ``docs/data.md#corpus-layout``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import InputError, Veco2Error
from .readers import (
    ReadStats, read_monolingual, read_monolingual_jsonl, read_parallel, read_parallel_jsonl, read_parallel_moses,
)

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo_data"

#: File suffixes of each part of the layout, in the order they are looked for.
PARALLEL_SUFFIXES = (".tsv", ".jsonl")
MONO_SUFFIXES = (".txt", ".jsonl")
DICTIONARY_SUFFIXES = (".tsv", ".tei", ".txt")


def _find(base: Path) -> Path | None:
    """``base`` or ``base.gz``, whichever is there.  ``lexists``: a broken link or a link loop is
    found too, so that reading it reports what is wrong with it instead of "missing"."""
    for candidate in (base, base.with_name(base.name + ".gz")):
        if os.path.lexists(candidate):
            return candidate
    return None


def checked_records(path: str | Path, records_of: Callable[[ReadStats], Iterable],
                    keep_stats: Callable[[ReadStats], None] | None = None,
                    stats: ReadStats | None = None) -> Iterator:
    """Yield the records of one file, ``records_of(stats)``, as a stream.  At its end, an empty file,
    or one whose every line is a skip, is an error (a wrong or broken file, not noise); other skips
    are counted, logged and handed to ``keep_stats`` (for the data card)."""
    stats = stats if stats is not None else ReadStats()
    kept = 0
    for record in records_of(stats):
        kept += 1
        yield record
    if stats.read == 0:
        raise InputError(path, None, "empty file (no lines)")
    if not kept:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(stats.skipped.items()))
        raise InputError(path, None, f"no usable line among {stats.read} ({reasons})")
    stats.log_summary()
    if keep_stats is not None:
        keep_stats(stats)


class Corpus:
    def __init__(self, root: str | Path = "demo"):
        self.root = DEMO_DIR if str(root) == "demo" else Path(root)
        if not (self.root / "parallel").is_dir():
            raise Veco2Error(f"{self.root}: not a corpus directory (expected parallel/, mono/, dict/ inside; "
                             "build the demo one with `veco2 data build-demo`)")
        self.stats: list[ReadStats] = []

    def languages(self) -> list[str]:
        """Non-English languages with training pairs, sorted."""
        found = set()
        for path in (self.root / "parallel" / "train").glob("en-*"):
            name = path.name.removesuffix(".gz")
            stem, _, suffix = name.partition(".")
            lang = stem.removeprefix("en-")
            if f".{suffix}" in PARALLEL_SUFFIXES or suffix in (lang, "en"):
                found.add(lang)
        return sorted(found)

    def _one_of(self, folder: str, stem: str, suffixes: tuple[str, ...]) -> Path | None:
        """The one file ``folder/stem.SUFFIX[.gz]`` there is; None if none; an error if several."""
        found = [path for suffix in suffixes if (path := _find(self.root / folder / f"{stem}{suffix}")) is not None]
        if len(found) > 1:
            raise Veco2Error(f"{self.root / folder}: {len(found)} files for {stem} "
                             f"({', '.join(p.name for p in found)}); keep one")
        return found[0] if found else None

    def missing(self, role: str, lang: str) -> Veco2Error:
        """The error of a missing ``role`` (mono | parallel) training file of ``lang``."""
        if role == "mono":
            return self._missing("mono", lang, MONO_SUFFIXES)
        return self._missing("parallel/train", f"en-{lang}", PARALLEL_SUFFIXES)

    def _missing(self, folder: str, stem: str, suffixes: tuple[str, ...]) -> Veco2Error:
        tried = ", ".join(f"{stem}{suffix}" for suffix in suffixes)
        return Veco2Error(f"{self.root / folder}/{stem}{suffixes[0]}: missing from the corpus "
                          f"(tried {tried}, each also with .gz)")

    def _read(self, path: Path, records_of) -> Iterator:
        """Stream one file (:func:`checked_records`); its stats are kept for the data card."""
        return checked_records(path, records_of, self.stats.append)

    def parallel_reader(self, lang: str, split: str = "train") -> tuple[Path, Callable] | None:
        """``(path, records_of)`` of the en-``lang`` pairs of ``split`` (a Moses pair: its English
        file), ``records_of(stats)`` yielding the pairs; None when the corpus has no such file.  Two
        files for one part, or half a Moses pair, are an error."""
        folder, stem = f"parallel/{split}", f"en-{lang}"
        path = self._one_of(folder, stem, PARALLEL_SUFFIXES)
        moses = (_find(self.root / folder / f"{stem}.en"), _find(self.root / folder / f"{stem}.{lang}"))
        if path is not None and any(moses):
            raise Veco2Error(f"{self.root / folder}: both {path.name} and a Moses pair {stem}.en / {stem}.{lang}; "
                             "keep one")
        if path is None and any(moses):
            if not all(moses):
                have = next(p for p in moses if p is not None)
                raise Veco2Error(f"{have}: Moses file without its other side ({stem}.en and {stem}.{lang} "
                                 "are read together)")
            src, tgt = moses
            return src, lambda stats: read_parallel_moses(src, tgt, stats)
        if path is None:
            return None
        if path.name.removesuffix(".gz").endswith(".jsonl"):
            return path, lambda stats: read_parallel_jsonl(path, "en", lang, stats)
        return path, lambda stats: read_parallel(path, stats)

    def monolingual_reader(self, lang: str) -> tuple[Path, Callable] | None:
        """``(path, records_of)`` of the ``lang`` sentences, as :meth:`parallel_reader`."""
        path = self._one_of("mono", lang, MONO_SUFFIXES)
        if path is None:
            return None
        if path.name.removesuffix(".gz").endswith(".jsonl"):
            return path, lambda stats: read_monolingual_jsonl(path, stats)
        return path, lambda stats: read_monolingual(path, stats)

    def iter_parallel(self, lang: str, split: str = "train") -> Iterator[tuple[str, str]]:
        """The en-``lang`` pairs of ``split`` as a stream (a missing file is an error)."""
        found = self.parallel_reader(lang, split)
        if found is None:
            raise self._missing(f"parallel/{split}", f"en-{lang}", PARALLEL_SUFFIXES)
        return self._read(*found)

    def iter_monolingual(self, lang: str) -> Iterator[str]:
        """The ``lang`` sentences as a stream (a missing file is an error)."""
        found = self.monolingual_reader(lang)
        if found is None:
            raise self._missing("mono", lang, MONO_SUFFIXES)
        return self._read(*found)

    def parallel(self, lang: str, split: str = "train") -> list[tuple[str, str]]:
        return list(self.iter_parallel(lang, split))

    def monolingual(self, lang: str) -> list[str]:
        return list(self.iter_monolingual(lang))

    def dictionary_path(self, lang: str) -> Path | None:
        """The en-``lang`` dictionary file in whichever format it is (None: no dictionary)."""
        return self._one_of("dict", f"en-{lang}", DICTIONARY_SUFFIXES)

    def dictionary(self, lang: str, **options):
        """The :class:`~veco2.data.synonyms.SynonymMiner` of the en-``lang`` dictionary, or None."""
        from .synonyms import SynonymMiner

        path = self.dictionary_path(lang)
        return None if path is None else SynonymMiner.from_file(path, "en", lang, **options)

    def skipped(self) -> dict[str, dict[str, int]]:
        return {s.path: dict(s.skipped) for s in self.stats if s.skipped}

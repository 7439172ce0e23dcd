"""The sources of a pre-training corpus (``data.sources``): hub datasets and local files, each one
role (monolingual text, parallel pairs, dictionaries), read as ordered streams of records per
(role, language) after the corpus directory (``data.corpus``), with the reader-stage filters
(dedup, length, script) that :mod:`veco2.data.shards` counts.  Reference and the base-scale
sources: ``docs/data.md#sources``.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import logging
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

from ..config import DataConfig, merge_into
from ..errors import ConfigError, InputError, Veco2Error
from .corpus import Corpus, checked_records
from .readers import (
    ReadStats, read_hub_monolingual, read_hub_parallel, read_monolingual, read_monolingual_jsonl, read_parallel,
    read_parallel_jsonl, read_parallel_moses,
)

log = logging.getLogger(__name__)

ROLES = ("mono", "parallel", "dict")
#: The formats of ``kind: files`` and the roles each can hold.
FORMAT_ROLES = {"text": ("mono",), "jsonl": ("mono", "parallel"), "tsv": ("parallel", "dict"),
                "moses": ("parallel",), "muse": ("dict",), "tei": ("dict",)}
#: Formats told by the file name (``.gz`` / ``.xz`` ignored); a Moses pair must be named.
SUFFIX_FORMATS = {"txt": "text", "jsonl": "jsonl", "json": "jsonl", "tsv": "tsv", "tei": "tei", "xml": "tei"}
COMPRESSIONS = (".gz", ".xz")


@dataclass
class SourceConfig:
    """One entry of ``data.sources`` (``docs/data.md#sources``)."""

    role: Literal["mono", "parallel", "dict"] | None = None
    kind: Literal["hub", "files"] | None = None
    name: str | None = None
    """hub: the dataset (``statmt/cc100``, ``Helsinki-NLP/opus-100``)."""
    config: str | None = None
    """hub: the dataset config; ``{lang}`` is the language, ``{pair}`` the two codes sorted and joined
    with ``-`` (OPUS-100's ``de-en``)."""
    configs: dict = field(default_factory=dict)
    """hub: language -> config where it is not ``config`` formatted (CC-100's ``zh: zh-Hans``)."""
    split: str = "train"
    heldout_split: str | None = None
    """hub, parallel: the split the held-out retrieval pairs come from (OPUS-100: ``validation``)."""
    revision: str | None = None
    text_field: str = "text"
    """mono: the field of the text (a dotted path)."""
    translation_field: str = "translation"
    """parallel: the field of a translation dict ``{"en": ..., "LANG": ...}``."""
    src_field: str | None = None
    """parallel: the English field instead (dotted; ``{lang}`` allowed), with ``tgt_field``."""
    tgt_field: str | None = None
    path: str | None = None
    """files: the file, or a glob (read in sorted order); ``{lang}`` / ``{lang3}`` (ISO 639-3) is the
    language; a Moses pair is the common stem of ``STEM.en`` and ``STEM.LANG``."""
    format: Literal["auto", "text", "jsonl", "tsv", "moses", "muse", "tei"] = "auto"
    languages: list[str] = field(default_factory=list)
    """Only these languages (empty: every language of the run)."""
    max_records: int | None = None
    """At most this many records per language from this source (counted before the filters)."""

    def covers(self, lang: str) -> bool:
        return not self.languages or lang in self.languages

    def hub_config(self, lang: str) -> str | None:
        if lang in self.configs:
            return str(self.configs[lang])
        return None if self.config is None else self.config.format(lang=lang, pair=pair_name(lang))

    def label(self, lang: str) -> str:
        """How logs and the manifest name this source for ``lang``."""
        if self.kind == "hub":
            revision = f"@{self.revision}" if self.revision else ""
            return f"hub:{self.name}{revision}/{self.hub_config(lang)}:{self.split}"
        return self.path_of(lang)

    def path_of(self, lang: str) -> str:
        return self.path.format(lang=lang, lang3=iso639_3(lang))


def pair_name(lang: str) -> str:
    """OPUS-100's config of an English pair: the two codes sorted, ``-``-joined (``de-en``, ``en-zh``)."""
    return "-".join(sorted(("en", lang)))


def parse_sources(data: DataConfig) -> list[SourceConfig]:
    """The ``data.sources`` entries as :class:`SourceConfig`, and the range checks of the preparation
    settings; each problem is one line naming ``data.sources[i].key``."""
    for key, value, low in (("prepare_workers", data.prepare_workers, 1), ("prepare_chunk_size", data.prepare_chunk_size, 1),
                            ("max_chars", data.max_chars, 1)):
        if value is not None and value < low:
            raise ConfigError(f"config: data.{key}: got {value!r}, must be >= {low}")
    if data.min_script_share is not None and not 0.0 <= data.min_script_share <= 1.0:
        raise ConfigError(f"config: data.min_script_share: got {data.min_script_share!r}, must be between 0 and 1")
    return [_parse_source(i, entry) for i, entry in enumerate(data.sources)]


def _parse_source(i: int, entry: dict) -> SourceConfig:
    where = f"data.sources[{i}]"
    source = SourceConfig()
    merge_into(source, entry, "config", prefix=f"{where}.")

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"config: {where}.{key}: {problem}")

    if source.role is None:
        raise fail("role", f"missing ({', '.join(ROLES)})")
    if source.kind is None:
        raise fail("kind", "missing (hub or files)")
    only_hub = ("name", "config", "revision", "heldout_split", "src_field", "tgt_field")
    if source.kind == "hub":
        if source.role == "dict":
            raise fail("kind", "dictionaries are files (MUSE, FreeDict TEI or TSV), not hub datasets")
        if not source.name:
            raise fail("name", "missing (the hub dataset, e.g. Helsinki-NLP/opus-100)")
        for key in ("path",):
            if getattr(source, key) is not None:
                raise fail(key, "only for kind: files")
        if source.format != "auto":
            raise fail("format", "only for kind: files")
        if (source.src_field is None) != (source.tgt_field is None):
            raise fail("src_field" if source.src_field is None else "tgt_field", "src_field and tgt_field go together")
        if source.heldout_split is not None and source.role != "parallel":
            raise fail("heldout_split", "only for parallel sources")
    else:
        if not source.path:
            raise fail("path", "missing (a file or glob; {lang} is the language)")
        for key in only_hub:
            if getattr(source, key) is not None:
                raise fail(key, "only for kind: hub")
        if source.configs:
            raise fail("configs", "only for kind: hub")
        if source.format == "auto":
            source.format = _format_of(source.path, source.role, fail)
        if source.role not in FORMAT_ROLES[source.format]:
            raise fail("format", f"{source.format} holds {' or '.join(FORMAT_ROLES[source.format])}, "
                                 f"not {source.role}")
        if "{lang" not in source.path and len(source.languages) != 1:
            raise fail("path", "has no {lang}: name the one language it holds in languages")
    if source.max_records is not None and source.max_records < 1:
        raise fail("max_records", f"got {source.max_records}, must be >= 1 (or null: all)")
    return source


def _format_of(path: str, role: str, fail) -> str:
    name = Path(path).name
    for compression in COMPRESSIONS:
        name = name.removesuffix(compression)
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix == "txt" and role == "dict":
        return "muse"
    if suffix not in SUFFIX_FORMATS:
        raise fail("format", f"cannot tell the format of {path!r} from its name; set format "
                             f"({', '.join(FORMAT_ROLES)})")
    return SUFFIX_FORMATS[suffix]


# ---------------------------------------------------------------------------------------------
# Streams: the records of one (role, language), source after source
# ---------------------------------------------------------------------------------------------


@dataclass
class StreamPart:
    """One source's records for one language: ``records_of(stats)`` yields them, checked at the end."""

    label: str
    records_of: Callable[[ReadStats], Iterator]
    max_records: int | None = None
    description: dict = field(default_factory=dict)


@dataclass
class Stream:
    role: Literal["mono", "parallel"]
    lang: str
    parts: list[StreamPart]

    def read(self, keep_stats: Callable[[ReadStats], None]) -> Iterator[tuple[object, str, int]]:
        """``(record, source label, record number in that source)`` in order; ``max_records`` of each
        part applies here (its stats are kept all the same)."""
        for part in self.parts:
            stats = ReadStats()
            records = part.records_of(stats)
            taken = 0
            for record in records:
                if part.max_records is not None and taken >= part.max_records:
                    records.close()
                    stats.log_summary()
                    keep_stats(stats)
                    log.info("%s: stopped after max_records=%d records", part.label, part.max_records)
                    break
                taken += 1
                yield record, part.label, stats.read


class CorpusSources:
    """The corpus directory (``data.corpus``, may be None) and ``data.sources`` of a run."""

    def __init__(self, data: DataConfig):
        self.sources = parse_sources(data)
        self.corpus = Corpus(data.corpus) if data.corpus else None
        if self.corpus is None and not self.sources:
            raise ConfigError("config: data.corpus is null and data.sources is empty: no corpus to read")
        self.stats: list[ReadStats] = self.corpus.stats if self.corpus is not None else []

    def languages(self, wanted: list[str]) -> list[str]:
        """``data.languages`` checked against what the corpus and the sources hold (empty: the corpus's)."""
        have = self.corpus.languages() if self.corpus is not None else []
        if not wanted:
            if self.corpus is None:
                raise ConfigError("config: data.languages: must be set when data.corpus is null "
                                  "(the sources do not list their languages)")
            return have
        covered = [s for s in self.sources if s.role == "parallel"]
        unknown = sorted(lang for lang in wanted if lang not in have and not any(s.covers(lang) for s in covered))
        if unknown:
            where = f"corpus {self.corpus.root}" if self.corpus is not None else "data.sources"
            raise Veco2Error(f"data.languages: {', '.join(unknown)} not in {where} (it has: {', '.join(have)})")
        return list(wanted)

    def stream(self, role: Literal["mono", "parallel"], lang: str) -> Stream:
        """The records of ``role`` in ``lang``: the corpus file first, then each source that covers it."""
        parts = []
        if self.corpus is not None:
            found = (self.corpus.monolingual_reader(lang) if role == "mono"
                     else self.corpus.parallel_reader(lang, "train"))
            if found is not None:
                path, records_of = found
                parts.append(StreamPart(str(path), _checked(path, records_of, self.stats),
                                        description={"kind": "corpus", "path": str(path)}))
            elif not self.sources:  # the corpus alone: its own "missing" error, as before sources existed
                raise self.corpus.missing(role, lang)
        for source in self.sources:
            if source.role == role and source.covers(lang):
                parts.extend(self._parts(source, lang, source.split))
        if not parts:
            raise Veco2Error(f"no {'monolingual text' if role == 'mono' else 'parallel pairs'} for {lang}: "
                             "neither data.corpus nor any of data.sources has them")
        return Stream(role, lang, parts)

    def _parts(self, source: SourceConfig, lang: str, split: str) -> list[StreamPart]:
        description = {k: v for k, v in dataclasses.asdict(source).items() if v not in (None, [], {})}
        if source.kind == "hub":
            label = source.label(lang) if split == source.split else source.label(lang).rsplit(":", 1)[0] + f":{split}"
            return [StreamPart(label, _checked(label, _hub_records(source, lang, split, label), self.stats),
                               source.max_records,
                               {**description, "config": source.hub_config(lang), "split": split})]
        paths = _expand(source.path_of(lang), source.format)
        if not paths:
            raise InputError(source.path_of(lang), None, f"no such file (data.sources: {source.role} source for {lang})")
        return [StreamPart(str(path), _checked(path, _file_records(source, path, lang), self.stats), source.max_records,
                           {**description, "path": str(path)}) for path in paths]

    def training_text(self, lang: str, data: DataConfig) -> Iterator[str]:
        """The monolingual sentences of ``lang`` that the shards hold (after the filters), for
        training a tokenizer."""
        keep = RecordFilter("mono", lang, data)
        for text, _label, _number in self.stream("mono", lang).read(self.stats.append):
            if not keep.active or keep.reason(text) is None:
                yield text

    def dictionary_path(self, lang: str) -> Path | None:
        """The en-``lang`` dictionary: the corpus's, else the first dict source with a file for it."""
        if self.corpus is not None:
            path = self.corpus.dictionary_path(lang)
            if path is not None:
                return path
        for source in self.sources:
            if source.role == "dict" and source.covers(lang):
                paths = _expand(source.path_of(lang), source.format)
                if len(paths) > 1:
                    raise InputError(source.path_of(lang), None, f"{len(paths)} dictionary files match; keep one")
                if paths:
                    return paths[0]
        return None

    def heldout_pairs(self, lang: str, split: str = "dev") -> list[tuple[str, str]]:
        """Held-out pairs of ``lang``: the corpus's ``split``, else the ``heldout_split`` of the first
        parallel hub source that covers ``lang`` and names one (empty when there is none).  The same
        call as :meth:`Corpus.parallel` so that ``veco2.trainer.heldout_retrieval`` reads either."""
        if self.corpus is not None and (not self.sources or self.corpus.parallel_reader(lang, split) is not None):
            return self.corpus.parallel(lang, split)
        for source in self.sources:
            if source.role == "parallel" and source.heldout_split and source.covers(lang):
                (part,) = self._parts(source, lang, source.heldout_split)
                return list(part.records_of(ReadStats()))
        return []

    parallel = heldout_pairs  # the interface of Corpus that held-out retrieval uses

    def skipped(self) -> dict[str, dict[str, int]]:
        return {s.path: dict(s.skipped) for s in self.stats if s.skipped}

    def describe(self) -> list[dict]:
        """The sources, as the manifest records them (where every shard came from)."""
        return [{k: v for k, v in dataclasses.asdict(s).items() if v not in (None, [], {})} for s in self.sources]


def _checked(path, records_of, stats_list: list[ReadStats]) -> Callable[[ReadStats], Iterator]:
    def records(stats: ReadStats) -> Iterator:
        return checked_records(path, records_of, stats_list.append, stats)
    return records


def _expand(pattern: str, fmt: str) -> list[Path]:
    """The files of a path or glob, sorted; for a Moses pair, the English files of the stem(s)."""
    probe = pattern + ".en" if fmt == "moses" else pattern
    if glob.has_magic(probe):
        found = sorted(glob.glob(probe) + [p for c in COMPRESSIONS for p in glob.glob(probe + c)])
    else:
        found = [p for p in (probe, *(probe + c for c in COMPRESSIONS)) if os.path.lexists(p)][:1]
    return [Path(p) for p in found]


def _file_records(source: SourceConfig, path: Path, lang: str) -> Callable[[ReadStats], Iterator]:
    fmt = source.format
    if fmt == "text":
        return lambda stats: read_monolingual(path, stats)
    if fmt == "jsonl" and source.role == "mono":
        return lambda stats: read_monolingual_jsonl(path, stats, source.text_field)
    if fmt == "jsonl":
        return lambda stats: read_parallel_jsonl(path, "en", lang, stats)
    if fmt == "tsv":
        return lambda stats: read_parallel(path, stats)
    # Moses: STEM.en[.gz] and STEM.LANG with the same compression
    name = str(path)
    compression = next((c for c in COMPRESSIONS if name.endswith(c)), "")
    other = Path(name.removesuffix(compression).removesuffix(".en") + f".{lang}{compression}")
    return lambda stats: read_parallel_moses(path, other, stats)


# ---------------------------------------------------------------------------------------------
# Hub datasets, streamed (or read from $VECO2_HUB_MIRROR, the local mirror XTREME uses too)
# ---------------------------------------------------------------------------------------------


def _hub_records(source: SourceConfig, lang: str, split: str, label: str) -> Callable[[ReadStats], Iterator]:
    def records(stats: ReadStats) -> Iterator:
        rows = hub_rows(source.name, source.hub_config(lang), split, source.revision, label)
        if source.role == "mono":
            read = read_hub_monolingual(rows, label, source.text_field, stats)
        else:
            src, tgt = ((source.src_field.format(lang=lang), source.tgt_field.format(lang=lang))
                        if source.src_field else (f"{source.translation_field}.en", f"{source.translation_field}.{lang}"))
            read = read_hub_parallel(rows, label, src, tgt, stats)
        return read
    return records


def hub_rows(name: str, config: str | None, split: str, revision: str | None, label: str) -> Iterator[dict]:
    """The rows of a hub dataset, ``datasets.load_dataset(name, config, split=split, streaming=True)``;
    with ``$VECO2_HUB_MIRROR`` the copy of the dataset repository there.  Failures are one line."""
    from ..xtreme.data import HUB_MIRROR_ENV, hub_mirror

    mirror = hub_mirror()
    options = {}
    if mirror is not None:
        location = mirror / name
        if not location.is_dir():
            raise InputError(label, None, f"${HUB_MIRROR_ENV}={mirror} has no copy of {name} (fill it with "
                                          f"`hf download {name} --repo-type dataset --local-dir {location}`)")
        location = str(location)
    else:
        location = name
        if revision:
            options["revision"] = revision
    import datasets  # heavy import, only when a hub source is read

    try:
        rows = iter(datasets.load_dataset(location, config, split=split, streaming=True, **options))
    except Exception as err:  # the hub raises many types; one line with the name and the reason
        raise InputError(label, None, f"cannot load hub dataset ({type(err).__name__}: {_one_line(err)})") from None
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as err:  # a streamed read fails mid-way (network, a corrupt file)
            raise InputError(label, None, f"reading failed ({type(err).__name__}: {_one_line(err)})") from None
        yield row


def _one_line(err: Exception, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


# ---------------------------------------------------------------------------------------------
# Filters of the reader stage (one process, in input order: deterministic)
# ---------------------------------------------------------------------------------------------

DUPLICATE = "duplicate (after case folding and whitespace normalisation)"
TOO_LONG = "longer than data.max_chars"
WRONG_SCRIPT = "under data.min_script_share letters in the language's script"

#: ISO 639-1 -> (ISO 639-3, scripts): the script names are the first word of the Unicode character
#: names of the letters (``unicodedata.name``).  The XTREME languages and the CC-100 / OPUS-100 ones
#: veco2's configs use; a language missing here is not script-filtered (logged).
LANGUAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "af": ("afr", ("LATIN",)), "ar": ("ara", ("ARABIC",)), "bg": ("bul", ("CYRILLIC",)),
    "bn": ("ben", ("BENGALI",)), "ca": ("cat", ("LATIN",)), "cs": ("ces", ("LATIN",)),
    "da": ("dan", ("LATIN",)), "de": ("deu", ("LATIN",)), "el": ("ell", ("GREEK",)), "en": ("eng", ("LATIN",)),
    "es": ("spa", ("LATIN",)), "et": ("est", ("LATIN",)), "eu": ("eus", ("LATIN",)), "fa": ("fas", ("ARABIC",)),
    "fi": ("fin", ("LATIN",)), "fr": ("fra", ("LATIN",)), "he": ("heb", ("HEBREW",)),
    "hi": ("hin", ("DEVANAGARI",)), "hr": ("hrv", ("LATIN",)), "hu": ("hun", ("LATIN",)),
    "id": ("ind", ("LATIN",)), "it": ("ita", ("LATIN",)), "ja": ("jpn", ("CJK", "HIRAGANA", "KATAKANA")),
    "jv": ("jav", ("LATIN",)), "ka": ("kat", ("GEORGIAN",)), "kk": ("kaz", ("CYRILLIC",)),
    "ko": ("kor", ("HANGUL", "CJK")), "lt": ("lit", ("LATIN",)), "lv": ("lav", ("LATIN",)),
    "ml": ("mal", ("MALAYALAM",)), "mr": ("mar", ("DEVANAGARI",)), "ms": ("msa", ("LATIN",)),
    "my": ("mya", ("MYANMAR",)), "nl": ("nld", ("LATIN",)), "no": ("nor", ("LATIN",)), "pl": ("pol", ("LATIN",)),
    "pt": ("por", ("LATIN",)), "ro": ("ron", ("LATIN",)), "ru": ("rus", ("CYRILLIC",)), "sk": ("slk", ("LATIN",)),
    "sl": ("slv", ("LATIN",)), "sv": ("swe", ("LATIN",)), "sw": ("swh", ("LATIN",)), "ta": ("tam", ("TAMIL",)),
    "te": ("tel", ("TELUGU",)), "th": ("tha", ("THAI",)), "tl": ("tgl", ("LATIN",)), "tr": ("tur", ("LATIN",)),
    "uk": ("ukr", ("CYRILLIC",)), "ur": ("urd", ("ARABIC",)), "vi": ("vie", ("LATIN",)), "yo": ("yor", ("LATIN",)),
    "zh": ("zho", ("CJK",)),
}


def iso639_3(lang: str) -> str:
    """The ISO 639-3 code FreeDict names its files by (``de`` -> ``deu``); the code itself if unknown."""
    return LANGUAGES.get(lang, (lang, ()))[0]


@functools.lru_cache(maxsize=1 << 16)
def script_of(char: str) -> str | None:
    """First word of the Unicode name for letters (``"LATIN"``, ``"CJK"``, ``"HANGUL"``...); None
    for anything else.  Cached per character: the script filters call it on every letter."""
    if not char.isalpha():
        return None
    try:
        return unicodedata.name(char).split(" ", 1)[0]
    except ValueError:
        return None


def script_share(text: str, scripts: tuple[str, ...], without_letters: float = 1.0) -> float:
    """Share of the letters of ``text`` in one of ``scripts``; ``without_letters`` for a text of digits
    and symbols only (1.0: the script filter keeps it)."""
    letters = [script_of(c) for c in text if c.isalpha()]
    return sum(s in scripts for s in letters) / len(letters) if letters else without_letters


def dedup_hash(text: str) -> int:
    """An 8-byte hash of ``text`` case-folded with its whitespace collapsed (what dedup compares)."""
    key = " ".join(text.split()).casefold().encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


class RecordFilter:
    """The filters of one stream: ``reason(record)`` is None for a kept record, else the skip reason.
    Dedup keeps one 8-byte hash per kept record (not the text)."""

    def __init__(self, role: str, lang: str, data: DataConfig):
        self.role, self.lang = role, lang
        self.dedup, self.max_chars, self.min_share = data.dedup, data.max_chars, data.min_script_share
        self.seen: set[int] = set()
        self.scripts = LANGUAGES.get(lang, (None, None))[1] if self.min_share is not None else None
        if self.min_share is not None and self.scripts is None:
            log.warning("%s: no script known for %r (veco2.data.sources.LANGUAGES): not script-filtered",
                        role, lang)

    @property
    def active(self) -> bool:
        return self.dedup or self.max_chars is not None or self.scripts is not None

    def reason(self, record) -> str | None:
        texts = (record,) if self.role == "mono" else record
        if self.max_chars is not None and any(len(t) > self.max_chars for t in texts):
            return TOO_LONG
        if self.scripts is not None:
            wanted = (self.scripts,) if self.role == "mono" else (LANGUAGES["en"][1], self.scripts)
            if any(script_share(t, s) < self.min_share for t, s in zip(texts, wanted)):
                return WRONG_SCRIPT
        if self.dedup:
            key = dedup_hash(record if self.role == "mono" else f"{record[0]}\t{record[1]}")
            if key in self.seen:
                return DUPLICATE
            self.seen.add(key)
        return None

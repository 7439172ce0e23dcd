"""Readers for the corpus formats (plain text, JSONL, TSV, Moses, MUSE-style and FreeDict TEI
dictionaries, hub datasets).  Bad content is a one-line :class:`~veco2.errors.InputError`
(``path:line: problem``) or a skip counted in :class:`ReadStats`; nothing is dropped silently.
Each format's rules: ``docs/data.md#formats-and-their-checks``.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InputError
from ..fileio import iter_lines, open_text

log = logging.getLogger(__name__)

#: At most this many skipped line numbers are kept per reason (the count is always exact).
MAX_SKIP_LINES_KEPT = 20


@dataclass
class ReadStats:
    """Counts of what a reader kept and skipped; ``skipped`` maps reason -> count."""

    path: str = ""
    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)

    def skip(self, reason: str, line: int | None = None) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if line is not None:
            kept = self.skipped_lines.setdefault(reason, [])
            if len(kept) < MAX_SKIP_LINES_KEPT:
                kept.append(line)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def log_summary(self) -> None:
        """Log one line; skips go to WARNING with the first line numbers of each reason."""
        if not self.skipped:
            log.info("%s: %d records read, %d kept", self.path, self.read, self.kept)
            return
        details = "; ".join(f"{reason}: {count}{self._where(reason, count)}"
                            for reason, count in sorted(self.skipped.items()))
        log.warning("%s: %d read, %d kept, skipped %s", self.path, self.read, self.kept, details)


    def _where(self, reason: str, count: int) -> str:
        """`` (lines 4, 5, ...)``: the kept line numbers of one reason; empty when none were kept."""
        lines = self.skipped_lines.get(reason, [])
        if not lines:
            return ""
        return f" (lines {', '.join(map(str, lines))}{', ...' if count > len(lines) else ''})"


def _stats(stats: ReadStats | None, path: str | Path) -> ReadStats:
    stats = stats if stats is not None else ReadStats()
    stats.path = str(path)
    return stats


# ---------------------------------------------------------------------------------------------
# Checks shared by the readers
# ---------------------------------------------------------------------------------------------

INVISIBLE_LINE = "invisible characters only"
INVISIBLE_SIDE = "side of invisible characters only"
HEADER_LINE = "header line"
UNTRANSLATED = "target equals source (untranslated)"

#: Column names of a header line: ``source``/``target`` and their usual spellings (``src``,
#: ``tgt``, ``trg``, ``text``, ``sentence``, ``translation``, optionally with a ``_text`` /
#: ``_sentence`` / ``_lang`` suffix), or language codes (``en``, ``de``, ``eng``, ``zh-CN``).
_COLUMN_NAME = re.compile(r"(?:src|source|tgt|trg|target|text|sentence|translation|word|headword)"
                          r"(?:[-_ ]?(?:text|sentence|lang|language|word))?", re.I)
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:[-_][a-z]{2,4})?", re.I)


def looks_like_header(fields: list[str] | tuple[str, ...]) -> bool:
    """Whether the two fields of a file's first line are column names, not data: both name columns
    (``source<TAB>target``), or both are language codes one of which is English (``en<TAB>de``:
    every corpus and dictionary of veco2 pairs English with another language)."""
    if len(fields) != 2 or fields[0].casefold() == fields[1].casefold():
        return False
    if all(_COLUMN_NAME.fullmatch(f.strip()) for f in fields):
        return True
    codes = [f.strip().casefold() for f in fields]
    return all(_LANGUAGE_CODE.fullmatch(c) for c in codes) and bool({"en", "eng"} & {c[:3].rstrip("-_") for c in codes})


def invisible_only(text: str) -> bool:
    """Non-empty ``text`` made only of whitespace and Unicode format characters (category ``Cf``:
    zero-width space, zero-width joiners, word joiner, BOM, soft hyphen, bidi marks)."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


def _pair_skip(src: str, tgt: str) -> str | None:
    """The skip reason of a stripped parallel pair, or None when it is kept."""
    if not src or not tgt:
        return "empty side"
    if invisible_only(src) or invisible_only(tgt):
        return INVISIBLE_SIDE
    if src == tgt:
        return UNTRANSLATED
    return None


def _keep_pair(stats: "ReadStats", src: str, tgt: str, number: int, reason: str | None = None) -> bool:
    """Count a stripped pair of line ``number`` as kept, or as a skip with its reason (``reason``, else
    :func:`_pair_skip`'s); True when it is kept."""
    reason = reason or _pair_skip(src, tgt)
    if reason is not None:
        stats.skip(reason, number)
        return False
    stats.kept += 1
    return True


# ---------------------------------------------------------------------------------------------
# Monolingual and parallel text
# ---------------------------------------------------------------------------------------------


def read_monolingual(path: str | Path, stats: ReadStats | None = None) -> Iterator[str]:
    """Yield the non-empty, whitespace-stripped lines of a text file (``.gz`` ok).

    Empty (or whitespace-only) lines are counted in ``stats.skipped["empty line"]``, lines of
    invisible characters only in ``stats.skipped[INVISIBLE_LINE]``.
    """
    stats = _stats(stats, path)
    for number, text in iter_lines(path):
        stats.read += 1
        text = text.strip()
        if _keep_sentence(text, number, stats):
            yield text


def read_parallel(path: str | Path, stats: ReadStats | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(src, tgt)`` from a TSV file with exactly two columns per line.

    Raises :class:`InputError` for a line with no tab or more than one tab.  Counted skips: empty
    lines, pairs with an empty or invisible-only side, a header as the first line
    (:func:`looks_like_header`), untranslated copies (target equal to source).
    """
    stats = _stats(stats, path)
    for number, text in iter_lines(path):
        stats.read += 1
        if not text.strip():
            stats.skip("empty line", number)
            continue
        columns = text.split("\t")
        if len(columns) != 2:
            raise InputError(path, number, f"expected 2 tab-separated columns (src<TAB>tgt), found {len(columns)}")
        src, tgt = columns[0].strip(), columns[1].strip()
        header = HEADER_LINE if number == 1 and looks_like_header((src, tgt)) else None
        if _keep_pair(stats, src, tgt, number, header):
            yield src, tgt


def _json_objects(path: str | Path) -> Iterator[tuple[int, dict | None]]:
    """``(line_number, object)`` per line of a JSONL file; ``None`` for a blank line.  A line that is
    not JSON, or not a JSON object, is an :class:`InputError` (a corpus is not a log: its last line
    is data too)."""
    for number, text in iter_lines(path):
        if not text.strip():
            yield number, None
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(path, number, f"corrupt JSON line: {err.msg} (column {err.colno})") from None
        if not isinstance(record, dict):
            raise InputError(path, number, f"expected a JSON object per line, got {type(record).__name__}")
        yield number, record


def _json_text(record: dict, key: str, path: str | Path, number: int, container: str | None = None) -> str:
    value = record.get(key) if container is None else record[container].get(key)
    where = key if container is None else f"{container}.{key}"
    if value is None:
        fields = sorted(record if container is None else record[container])
        raise InputError(path, number, f"no field {where!r} (fields: {', '.join(map(repr, fields))})")
    if not isinstance(value, str):
        raise InputError(path, number, f"field {where!r} must be a string, got {type(value).__name__}")
    return value


def read_monolingual_jsonl(path: str | Path, stats: ReadStats | None = None, field: str = "text") -> Iterator[str]:
    """Yield the ``field`` of each JSON object of a JSONL file (``.gz`` ok), stripped; the same skips
    as :func:`read_monolingual`.  A missing or non-string field is an :class:`InputError`."""
    stats = _stats(stats, path)
    for number, record in _json_objects(path):
        stats.read += 1
        if record is None:
            stats.skip("empty line", number)
            continue
        text = _json_text(record, field, path, number).strip()
        if _keep_sentence(text, number, stats):
            yield text


def read_parallel_jsonl(path: str | Path, src_lang: str, tgt_lang: str,
                        stats: ReadStats | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(src, tgt)`` from a JSONL file of ``{"SRC": ..., "TGT": ...}`` objects, or of
    ``{"translation": {"SRC": ..., "TGT": ...}}`` (the layout of the hub's translation datasets,
    e.g. ``wmt/wmt19``).  The same skips as :func:`read_parallel`, except headers (JSON has none);
    a missing or non-string field is an :class:`InputError`."""
    stats = _stats(stats, path)
    for number, record in _json_objects(path):
        stats.read += 1
        if record is None:
            stats.skip("empty line", number)
            continue
        container = "translation" if isinstance(record.get("translation"), dict) else None
        src = _json_text(record, src_lang, path, number, container).strip()
        tgt = _json_text(record, tgt_lang, path, number, container).strip()
        if _keep_pair(stats, src, tgt, number):
            yield src, tgt


def _count_lines(path: str | Path) -> int:
    return sum(1 for _ in iter_lines(path))  # decoding errors are reported here, before any pair


def read_parallel_moses(
    src_path: str | Path, tgt_path: str | Path, stats: ReadStats | None = None
) -> Iterator[tuple[str, str]]:
    """Yield ``(src, tgt)`` from two line-aligned files (Moses layout, ``.gz`` ok).

    The line counts are checked *before* anything is yielded: a mismatch raises an
    :class:`InputError` naming both files and both counts.  Line pairs with an empty or
    invisible-only side and untranslated copies are counted skips.
    """
    src_lines, tgt_lines = _count_lines(src_path), _count_lines(tgt_path)
    if src_lines != tgt_lines:
        raise InputError(
            src_path, None,
            f"line count {src_lines} differs from {tgt_path} ({tgt_lines} lines); files must be line-aligned",
        )
    stats = _stats(stats, f"{src_path} + {tgt_path}")
    for (number, src), (_, tgt) in zip(iter_lines(src_path), iter_lines(tgt_path)):
        stats.read += 1
        src, tgt = src.strip(), tgt.strip()
        if _keep_pair(stats, src, tgt, number):
            yield src, tgt


# ---------------------------------------------------------------------------------------------
# Dictionaries
# ---------------------------------------------------------------------------------------------


def read_dictionary(path: str | Path, stats: ReadStats | None = None) -> list[tuple[str, str]]:
    """Read a MUSE-style bilingual dictionary into a list of ``(src, tgt)`` pairs (order kept).

    A line is ``src<TAB>tgt`` (either side may contain spaces) or, without a tab, exactly two
    whitespace-separated words.  Empty lines and malformed lines (one field, or more than two
    fields without a tab, or more than one tab) are counted skips whose line numbers are logged,
    and so are a header as the first line (:func:`looks_like_header`) and entries with an
    invisible-only side.  Duplicate pairs are kept (a dictionary may list them;
    :class:`~veco2.data.synonyms.SynonymMiner` merges and counts them).

    Raises :class:`InputError` when the file has content but not one usable line: that is the
    wrong file or the wrong format, not a few noisy lines.
    """
    stats = _stats(stats, path)
    pairs: list[tuple[str, str]] = []
    for number, text in iter_lines(path):
        stats.read += 1
        if not text.strip():
            stats.skip("empty line", number)
            continue
        if "\t" in text:
            fields = [part.strip() for part in text.split("\t")]
        else:
            fields = text.split()
        if len(fields) != 2 or not fields[0] or not fields[1]:
            stats.skip("malformed line (need 'src tgt' or 'src<TAB>tgt')", number)
            continue
        if number == 1 and looks_like_header(fields):
            stats.skip(HEADER_LINE, number)
            continue
        if invisible_only(fields[0]) or invisible_only(fields[1]):
            stats.skip(INVISIBLE_SIDE, number)
            continue
        pairs.append((fields[0], fields[1]))
    stats.kept = len(pairs)
    malformed_reason = "malformed line (need 'src tgt' or 'src<TAB>tgt')"
    if not pairs and stats.skipped.get(malformed_reason):
        raise InputError(path, stats.skipped_lines[malformed_reason][0],
                         f"no usable dictionary line among {stats.skipped[malformed_reason]} non-empty lines "
                         "(expected 'src tgt' or 'src<TAB>tgt')")
    if stats.skipped:
        stats.log_summary()
    return pairs


_TEI_NS = "{http://www.tei-c.org/ns/1.0}"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_freedict_tei(path: str | Path, stats: ReadStats | None = None) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(headword, [translations])`` for each ``<entry>`` of a FreeDict TEI file.

    Headword: the text of ``form/orth`` (first one).  Translations: the texts of every
    ``cit[@type="trans"]/quote`` in the entry, in document order, without duplicates.  Entries
    without a headword or without any translation are counted skips, with the line where the entry
    ends.  Malformed XML raises an :class:`InputError` with the parser's line number.  Works with
    and without the TEI namespace.
    """
    stats = _stats(stats, path)
    parser = ET.XMLPullParser(events=("end",))
    number = 0
    try:
        with open_text(path) as handle:
            # Fed line by line, so that every event read after a feed ends on the line just fed.
            for number, raw in enumerate(_raw_lines(path, handle), 1):
                parser.feed(raw)
                yield from _tei_entries(parser, stats, number)
            parser.close()
            yield from _tei_entries(parser, stats, number)
    except ET.ParseError as err:
        raise InputError(path, err.position[0], f"malformed TEI XML: {err}") from None


def _raw_lines(path: str | Path, handle) -> Iterator[bytes]:
    try:
        yield from handle
    except (EOFError, OSError) as err:  # truncated or corrupt .gz
        raise InputError(path, None, f"corrupt compressed file ({type(err).__name__}: {err})") from None


def _tei_entries(parser: ET.XMLPullParser, stats: ReadStats, line: int) -> Iterator[tuple[str, list[str]]]:
    for _event, element in parser.read_events():
        if _local(element.tag) != "entry":
            continue
        stats.read += 1
        headword = None
        translations: list[str] = []
        for node in element.iter():
            name = _local(node.tag)
            if name == "orth" and headword is None and (node.text or "").strip():
                headword = " ".join(node.text.split())
            elif name == "cit" and node.get("type") == "trans":
                for quote in node.iter():
                    if _local(quote.tag) == "quote" and (quote.text or "").strip():
                        text = " ".join(quote.text.split())
                        if text not in translations:
                            translations.append(text)
        element.clear()  # keep memory flat on 100k-entry dictionaries
        if headword is None:
            stats.skip("entry without headword", line)
            continue
        if not translations:
            stats.skip("entry without translation", line)
            continue
        stats.kept += 1
        yield headword, translations


# ---------------------------------------------------------------------------------------------
# Hugging Face hub datasets (rows of ``datasets.load_dataset(..., streaming=True)``)
# ---------------------------------------------------------------------------------------------


def read_hub_monolingual(rows: Iterable[dict], name: str, text_field: str = "text",
                         stats: ReadStats | None = None) -> Iterator[str]:
    """Yield the stripped ``text_field`` (a dotted path) of each row of the hub dataset ``name``; the
    same skips as :func:`read_monolingual`.  A row without the field is an :class:`InputError`."""
    stats = _stats(stats, name)
    for number, row in enumerate(rows, 1):
        stats.read += 1
        text = _field(row, text_field, name, number).strip()
        if _keep_sentence(text, number, stats):
            yield text


def read_hub_parallel(rows: Iterable[dict], name: str, src_field: str, tgt_field: str,
                      stats: ReadStats | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(src, tgt)`` from the rows of the hub dataset ``name``, the fields as dotted paths
    (``"translation.en"`` reads ``row["translation"]["en"]``, the layout of OPUS-100 and WMT on the
    hub); the same skips as :func:`read_parallel_jsonl`."""
    stats = _stats(stats, name)
    for number, row in enumerate(rows, 1):
        stats.read += 1
        src = _field(row, src_field, name, number).strip()
        tgt = _field(row, tgt_field, name, number).strip()
        if _keep_pair(stats, src, tgt, number):
            yield src, tgt


def _field(row: dict, dotted: str, name: str, number: int) -> str:
    value = row
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise InputError(name, number, f"row has no field {dotted!r} (fields: {sorted(row)})")
        value = value[key]
    if not isinstance(value, str):
        raise InputError(name, number, f"field {dotted!r} must be a string, got {type(value).__name__}")
    return value


def _keep_sentence(text: str, number: int, stats) -> bool:
    """Whether one stripped monolingual line is kept; an empty or invisible-only one is a counted skip."""
    if not text:
        stats.skip("empty line", number)
        return False
    if invisible_only(text):
        stats.skip(INVISIBLE_LINE, number)
        return False
    stats.kept += 1
    return True

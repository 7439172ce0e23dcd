"""Readers for the corpus formats real veco2 runs use.

Every reader takes a local path (plain or ``.gz``) and yields clean records.  Bad content is
either a one-line :class:`~veco2.errors.InputError` (``path:line: problem``) or a *counted* skip:
each reader fills a :class:`ReadStats` that the caller can log, so nothing is dropped silently.

Formats
-------
* monolingual text: one sentence per line; empty lines are counted skips.
* parallel TSV: ``src<TAB>tgt`` per line; a line without exactly one tab is an error
  (a TSV with a broken column is a broken file, not noise); lines with an empty side are
  counted skips.
* parallel Moses: two line-aligned files; different line counts are an error naming both.
* MUSE-style dictionaries: ``src tgt`` separated by a tab or by whitespace (multi-word entries
  need the tab).  Malformed lines (one field, or more than two whitespace fields without a tab)
  are counted skips whose line numbers are logged; if *no* line of a non-empty file is usable the
  whole file is malformed and an :class:`InputError` is raised (wrong file, wrong format).
* FreeDict TEI XML: ``(headword, [translations])`` via ``xml.etree.ElementTree.iterparse``.
* Hub datasets: :func:`load_hub_parallel` / :func:`load_hub_text` call
  ``datasets.load_dataset`` when the name is not an existing path (needs network; not tested
  offline).

Text decoding (BOM, CRLF, invalid UTF-8, NUL bytes) is :func:`veco2.fileio.iter_lines`.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

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
        details = "; ".join(
            f"{reason}: {count} (lines {', '.join(map(str, self.skipped_lines.get(reason, [])))}"
            f"{', ...' if count > len(self.skipped_lines.get(reason, [])) else ''})"
            for reason, count in sorted(self.skipped.items())
        )
        log.warning("%s: %d read, %d kept, skipped %s", self.path, self.read, self.kept, details)


def _stats(stats: ReadStats | None, path: str | Path) -> ReadStats:
    stats = stats if stats is not None else ReadStats()
    stats.path = str(path)
    return stats


# ---------------------------------------------------------------------------------------------
# Monolingual and parallel text
# ---------------------------------------------------------------------------------------------


def read_monolingual(path: str | Path, stats: ReadStats | None = None) -> Iterator[str]:
    """Yield the non-empty, whitespace-stripped lines of a text file (``.gz`` ok).

    Empty (or whitespace-only) lines are counted in ``stats.skipped["empty line"]``.
    """
    stats = _stats(stats, path)
    for number, text in iter_lines(path):
        stats.read += 1
        text = text.strip()
        if not text:
            stats.skip("empty line", number)
            continue
        stats.kept += 1
        yield text


def read_parallel(path: str | Path, stats: ReadStats | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(src, tgt)`` from a TSV file with exactly two columns per line.

    Raises :class:`InputError` for a line with no tab or more than one tab.  Empty lines and
    lines with an empty side are counted skips.
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
        if not src or not tgt:
            stats.skip("empty side", number)
            continue
        stats.kept += 1
        yield src, tgt


def _count_lines(path: str | Path) -> int:
    with open_text(path) as handle:
        return sum(1 for _ in handle)


def read_parallel_moses(
    src_path: str | Path, tgt_path: str | Path, stats: ReadStats | None = None
) -> Iterator[tuple[str, str]]:
    """Yield ``(src, tgt)`` from two line-aligned files (Moses layout, ``.gz`` ok).

    The line counts are checked *before* anything is yielded: a mismatch raises an
    :class:`InputError` naming both files and both counts.  Line pairs where either side is
    empty are counted skips.
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
        if not src or not tgt:
            stats.skip("empty side", number)
            continue
        stats.kept += 1
        yield src, tgt


# ---------------------------------------------------------------------------------------------
# Dictionaries
# ---------------------------------------------------------------------------------------------


def read_dictionary(path: str | Path, stats: ReadStats | None = None) -> list[tuple[str, str]]:
    """Read a MUSE-style bilingual dictionary into a list of ``(src, tgt)`` pairs (order kept).

    A line is ``src<TAB>tgt`` (either side may contain spaces) or, without a tab, exactly two
    whitespace-separated words.  Empty lines and malformed lines (one field, or more than two
    fields without a tab, or more than one tab) are counted skips whose line numbers are logged.
    Duplicate pairs are kept (a dictionary may list them; callers dedup if they need to).

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
    without a headword or without any translation are counted skips.  Malformed XML raises an
    :class:`InputError` with the parser's line number.  Works with and without the TEI namespace.
    """
    stats = _stats(stats, path)
    handle = open_text(path)
    try:
        for _event, element in ET.iterparse(handle, events=("end",)):
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
                stats.skip("entry without headword")
                continue
            if not translations:
                stats.skip("entry without translation")
                continue
            stats.kept += 1
            yield headword, translations
    except ET.ParseError as err:
        raise InputError(path, err.position[0], f"malformed TEI XML: {err}") from None
    finally:
        handle.close()


# ---------------------------------------------------------------------------------------------
# Hugging Face hub (real runs have network; the offline demo never calls these)
# ---------------------------------------------------------------------------------------------


def load_hub_parallel(
    name: str, config: str | None = None, split: str = "train",
    src_field: str = "translation.en", tgt_field: str | None = None, limit: int | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield ``(src, tgt)`` pairs from a local TSV path or a Hugging Face dataset.

    If ``name`` is an existing file it is read with :func:`read_parallel`.  Otherwise
    ``datasets.load_dataset(name, config, split=split, streaming=True)`` is used and fields are
    looked up by dotted path (``"translation.en"`` reads ``row["translation"]["en"]``, the
    layout of OPUS/WMT datasets on the hub).  ``tgt_field`` is required for hub datasets.
    """
    if Path(name).exists():
        yield from read_parallel(name)
        return
    if tgt_field is None:
        raise InputError(name, None, "tgt_field is required when loading a parallel dataset from the hub")
    for number, row in enumerate(_hub_rows(name, config, split, limit), 1):
        src, tgt = _field(row, src_field, name, number), _field(row, tgt_field, name, number)
        if src.strip() and tgt.strip():
            yield src.strip(), tgt.strip()


def load_hub_text(
    name: str, config: str | None = None, split: str = "train", text_field: str = "text",
    limit: int | None = None,
) -> Iterator[str]:
    """Yield sentences from a local text file (:func:`read_monolingual`) or a hub dataset."""
    if Path(name).exists():
        yield from read_monolingual(name)
        return
    for number, row in enumerate(_hub_rows(name, config, split, limit), 1):
        text = _field(row, text_field, name, number).strip()
        if text:
            yield text


def _hub_rows(name: str, config: str | None, split: str, limit: int | None) -> Iterator[dict]:
    import datasets  # heavy import, only when the hub path is taken

    try:
        rows = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:  # the hub raises many types; the user needs name + reason
        raise InputError(name, None, f"cannot load hub dataset (config={config!r}, split={split!r}): {err}") from None
    for number, row in enumerate(rows):
        if limit is not None and number >= limit:
            break
        yield row


def _field(row: dict, dotted: str, name: str, number: int) -> str:
    value = row
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise InputError(name, number, f"row has no field {dotted!r} (fields: {sorted(row)})")
        value = value[key]
    return str(value)

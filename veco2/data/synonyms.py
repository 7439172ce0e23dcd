"""Dictionary-synonym mining for the token-level contrastive loss: which subword spans of a parallel
pair are translations of each other by a bilingual dictionary.  VECO 2.0 does not publish its
matching rules; this is a reconstruction whose every choice (normalisation, segmentation,
pairing of repeated words, subword spans, truncation before matching) is a named option, set out
with the span storage format in ``docs/data.md#dictionary-synonym-mining``.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import logging
import re
import unicodedata
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import ConfigError, InputError
from ..fileio import atomic_write, iter_lines

log = logging.getLogger(__name__)

#: Language codes whose writing separates words without spaces (base code, lower case).
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"})
SEGMENTATIONS = ("auto", "space", "chars")
REPEAT_POLICIES = ("nearest", "all")
SPANS_FORMAT_VERSION = 1

CharSpan = tuple[int, int]
WordPair = tuple[CharSpan, CharSpan]


# --------------------------------------------------------------------------------------------------
# Character classes, built once at import.


def _ranges_class(codepoints: Iterable[int]) -> str:
    """A regex character-class body for a sorted set of code points, as compact ranges."""
    parts, run = [], None
    for cp in codepoints:
        if run and cp == run[1] + 1:
            run[1] = cp
            continue
        if run:
            parts.append(run)
        run = [cp, cp]
    if run:
        parts.append(run)
    return "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in parts
    )


# Combining marks live below U+30000 and in the variation-selector supplement (U+E0100..U+E01EF).
_MARK_CANDIDATES = (*range(0x30000), *range(0xE0000, 0xE1000))
_MARKS = _ranges_class(cp for cp in _MARK_CANDIDATES if unicodedata.category(chr(cp))[0] == "M")
#: A word: letters, digits, ``_`` (``\w``) and combining marks.
WORD = re.compile(f"[\\w{_MARKS}]+")
# ``re`` tests a class holding characters above U+FFFF range by range (4x slower); text without such
# characters -- nearly all -- uses the same class restricted to the BMP, which compiles to a bitmap.
_WORD_BMP = re.compile("[\\w" + _ranges_class(cp for cp in range(0x10000) if unicodedata.category(chr(cp))[0] == "M") + "]+")


def _word_pattern(text: str) -> re.Pattern:
    return _WORD_BMP if not text or max(text) <= "\uffff" else WORD


_CAPTURING = {WORD: re.compile(f"({WORD.pattern})"), _WORD_BMP: re.compile(f"({_WORD_BMP.pattern})")}


def _capturing(pattern: re.Pattern) -> re.Pattern:
    """The same pattern as one capturing group, so that ``split`` keeps the words."""
    return _CAPTURING[pattern]
#: Characters of scripts written without spaces between words.
_UNSPACED_RANGES = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3005\u3007\u3040-\u30ff\u31f0-\u31ff"  # kana, iteration marks
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Han
    "\uff66-\uff9f"  # half-width katakana
    "\U00020000-\U0003134f"  # Han extensions B-H
)
_UNSPACED_CHAR = re.compile(f"[{_UNSPACED_RANGES}]")
#: Characters allowed between the words of one multi-word entry.
_JOINERS = " \t\u00a0\u202f-\u2010\u2011'\u2019"


def normalize(text: str) -> str:
    """NFKC + case folding, the comparison form of entries and text."""
    return unicodedata.normalize("NFKC", text).casefold()


def base_language(code: str | None) -> str | None:
    """``"zh-CN"`` / ``"zh_cn"`` -> ``"zh"``."""
    return code.lower().replace("_", "-").split("-")[0] if code else None


def _folded(text: str) -> str | None:
    """``text`` case-folded, if that maps it character to character (NFKC-normalised text whose folding
    keeps its length -- then every character folds to exactly one); otherwise None."""
    if unicodedata.is_normalized("NFKC", text):
        folded = text.casefold()
        if len(folded) == len(text):
            return folded
    return None


def _words(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, normalised word)`` for each word of ``text``, offsets into ``text``.

    Fast path (:func:`_folded`): the regex runs once over the folded text.  Otherwise each word is
    normalised on its own (its key may then differ in length from its span).
    """
    folded = _folded(text)
    if folded is not None:
        return [(m.start(), m.end(), m.group()) for m in _word_pattern(text).finditer(folded)]
    return [(m.start(), m.end(), normalize(m.group())) for m in _word_pattern(text).finditer(text)]


# --------------------------------------------------------------------------------------------------
# One side of the dictionary: its vocabulary and its segmenter.


class _Side:
    """The entries of one language and the greedy longest-match segmenter over them."""

    def __init__(self, unspaced: bool):
        self.unspaced = unspaced
        self.vocab: dict[str, int] = {}  # entry key -> id
        # First word (space) / first character (chars) -> entry lengths, longest first.
        self._lengths: dict[str, set[int]] = collections.defaultdict(set)
        self.first: dict[str, tuple[int, ...]] = {}

    def key(self, entry: str) -> str:
        words = [w for _, _, w in _words(entry)]
        return "".join(words) if self.unspaced else " ".join(words)

    def add(self, key: str) -> int:
        index = self.vocab.get(key)
        if index is None:
            index = self.vocab[key] = len(self.vocab)
            if self.unspaced:
                self._lengths[key[0]].add(len(key))
            else:
                words = key.split(" ")
                self._lengths[words[0]].add(len(words))
        return index

    def freeze(self) -> None:
        self.first = {head: tuple(sorted(lengths, reverse=True)) for head, lengths in self._lengths.items()}
        del self._lengths

    def segment(self, text: str) -> list[tuple[int, int, int]]:
        """Dictionary units of ``text`` as ``(char_start, char_end, entry_id)``, left to right."""
        return self._segment_chars(_words(text)) if self.unspaced else self._segment_words(text)

    def _segment_words(self, text):
        # Hot path: one C-level regex split gives the words and, through the running sum of the piece
        # lengths, their boundaries: word k spans bounds[2k]:bounds[2k+1] (no match objects built).
        first, vocab = self.first, self.vocab
        folded = _folded(text)
        if folded is not None:
            parts = _capturing(_word_pattern(text)).split(folded)  # [gap, word, gap, word, ..., gap]
            words = parts[1::2]
            hits = [i for i, word in enumerate(words) if word in first]
            if not hits:
                return []
            bounds = list(itertools.accumulate(map(len, parts)))
        else:
            triples = _words(text)
            words = [word for _, _, word in triples]
            hits = [i for i, word in enumerate(words) if word in first]
            bounds = [offset for start, end, _ in triples for offset in (start, end)]
        units, n, free = [], len(words), 0
        for i in hits:
            if i < free:  # inside the previous multi-word match
                continue
            for length in first[words[i]]:
                if i + length > n:
                    continue
                if length == 1:
                    index = vocab.get(words[i])
                elif all(not text[bounds[2 * k - 1] : bounds[2 * k]].strip(_JOINERS) for k in range(i + 1, i + length)):
                    index = vocab.get(" ".join(words[i : i + length]))
                else:
                    index = None
                if index is not None:
                    units.append((bounds[2 * i], bounds[2 * (i + length) - 1], index))
                    free = i + length
                    break
        return units

    def _segment_chars(self, runs):
        units, first, vocab = [], self.first, self.vocab
        for start, end, key in runs:
            n = len(key)
            if n != end - start:  # normalisation changed the length: offsets inside are unknown
                index = vocab.get(key)
                if index is not None:
                    units.append((start, end, index))
                continue
            i = 0
            while i < n:
                lengths = first.get(key[i])
                if lengths is not None:
                    for length in lengths:
                        j = i + length
                        if j <= n and key[i:j] in vocab and _boundary_ok(key, i) and _boundary_ok(key, j):
                            units.append((start + i, start + j, vocab[key[i:j]]))
                            i = j
                            break
                    else:
                        i += 1
                else:
                    i += 1
        return units


def _boundary_ok(run: str, cut: int) -> bool:
    """A cut inside a word run is allowed unless both neighbours are space-delimited letters."""
    if cut == 0 or cut == len(run):
        return True
    return bool(_UNSPACED_CHAR.match(run[cut - 1]) or _UNSPACED_CHAR.match(run[cut]))


# --------------------------------------------------------------------------------------------------
# The miner.


class SynonymMiner:
    """Finds dictionary-translation word pairs in parallel sentences.

    Args:
        entries: ``(source word or phrase, target word or phrase)`` pairs; repeated sources give
            one-to-many entries.  Entries that normalise to no word (punctuation only) are skipped and
            counted in ``skipped_entries``.
        src_lang, tgt_lang: language codes, used by ``segmentation="auto"``.
        src_segmentation, tgt_segmentation: ``"auto"`` | ``"space"`` | ``"chars"`` (docs/data.md#dictionary-synonym-mining).
        repeats: ``"nearest"`` (default) | ``"all"`` -- how repeated words pair (docs/data.md#dictionary-synonym-mining).
    """

    def __init__(
        self,
        entries: Iterable[tuple[str, str]],
        src_lang: str | None = None,
        tgt_lang: str | None = None,
        *,
        src_segmentation: str = "auto",
        tgt_segmentation: str = "auto",
        repeats: str = "nearest",
    ):
        if repeats not in REPEAT_POLICIES:
            raise ConfigError(f"repeats={repeats!r}: allowed values are {', '.join(REPEAT_POLICIES)}")
        for name, value in (("src_segmentation", src_segmentation), ("tgt_segmentation", tgt_segmentation)):
            if value not in SEGMENTATIONS:
                raise ConfigError(f"{name}={value!r}: allowed values are {', '.join(SEGMENTATIONS)}")
        entries = list(entries)
        self.src_lang, self.tgt_lang, self.repeats = src_lang, tgt_lang, repeats
        self.src = _Side(_is_unspaced(src_segmentation, src_lang, [s for s, _ in entries]))
        self.tgt = _Side(_is_unspaced(tgt_segmentation, tgt_lang, [t for _, t in entries]))
        translations: dict[int, set[int]] = collections.defaultdict(set)
        self.skipped_entries = 0
        self.duplicate_entries = 0  # entries equal to an earlier one after normalisation (merged)
        for src, tgt in entries:
            src_key, tgt_key = self.src.key(src), self.tgt.key(tgt)
            if not src_key or not tgt_key:
                self.skipped_entries += 1
                continue
            targets = translations[self.src.add(src_key)]
            tgt_id = self.tgt.add(tgt_key)
            if tgt_id in targets:
                self.duplicate_entries += 1
            targets.add(tgt_id)
        self.src.freeze()
        self.tgt.freeze()
        self.translations: list[frozenset[int]] = [frozenset(translations[i]) for i in range(len(self.src.vocab))]
        if self.skipped_entries:
            log.info("dictionary %s-%s: skipped %d entries without a word", src_lang, tgt_lang, self.skipped_entries)
        if self.duplicate_entries:
            log.info("dictionary %s-%s: merged %d duplicate entries", src_lang, tgt_lang, self.duplicate_entries)

    @classmethod
    def from_tsv(cls, path: str | Path, src_lang: str | None = None, tgt_lang: str | None = None, **options):
        """Read ``source<TAB>target`` lines (optionally gzipped).  Blank lines are ignored, a header as
        the first line (``en<TAB>de``, ``source<TAB>target``) is skipped and logged; a line without
        exactly one tab raises an :class:`InputError` naming the file and line."""
        from .readers import looks_like_header

        entries = []
        for number, line in iter_lines(path):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise InputError(path, number, f"expected 'source<TAB>target', found {len(fields)} field(s)")
            if number == 1 and looks_like_header([f.strip() for f in fields]):
                log.warning("%s:1: skipped a header line (%r)", path, line)
                continue
            entries.append((fields[0], fields[1]))
        return cls._from_entries_of(path, entries, src_lang, tgt_lang, **options)

    @classmethod
    def from_file(cls, path: str | Path, src_lang: str | None = None, tgt_lang: str | None = None, **options):
        """Read a dictionary in the format its name says (``.gz`` ok): ``.tsv`` (:meth:`from_tsv`),
        ``.tei`` / ``.xml`` (FreeDict TEI, :func:`~veco2.data.readers.read_freedict_tei`: one entry
        per listed translation) or ``.txt`` (MUSE-style ``src tgt``,
        :func:`~veco2.data.readers.read_dictionary`)."""
        from .readers import ReadStats, read_dictionary, read_freedict_tei

        kind = dictionary_format(path)
        if kind == "tsv":
            return cls.from_tsv(path, src_lang, tgt_lang, **options)
        stats = ReadStats()
        if kind == "tei":
            entries = [(head, t) for head, translations in read_freedict_tei(path, stats) for t in translations]
            if stats.skipped:
                stats.log_summary()
        else:
            entries = read_dictionary(path, stats)  # logs its own skips
        return cls._from_entries_of(path, entries, src_lang, tgt_lang, **options)

    @classmethod
    def _from_entries_of(cls, path, entries, src_lang, tgt_lang, **options):
        """The miner of the entries read from ``path``; a file without a usable entry is an error."""
        if not entries:
            raise InputError(path, None, "dictionary has no entries")
        miner = cls(entries, src_lang, tgt_lang, **options)
        if not len(miner):  # e.g. a script whose letters are not word characters (symbols, private use)
            raise InputError(path, None, f"none of the {len(entries)} entries has a word on both sides "
                                         "(unknown script or punctuation only?)")
        if miner.skipped_entries:
            log.warning("%s: skipped %d of %d entries without a word on one side (unknown script or punctuation)",
                        path, miner.skipped_entries, len(entries))
        if miner.duplicate_entries:
            log.warning("%s: merged %d of %d entries that repeat an earlier entry (after NFKC and case folding)",
                        path, miner.duplicate_entries, len(entries))
        return miner

    def __len__(self) -> int:
        """Number of distinct (source entry, target entry) translation pairs."""
        return sum(len(t) for t in self.translations)

    def match(self, src_text: str, tgt_text: str, src_length: int | None = None,
              tgt_length: int | None = None) -> list[WordPair]:
        """Word pairs ``((s_start, s_end), (t_start, t_end))`` (character offsets, end exclusive) of
        ``src_text`` and ``tgt_text`` that the dictionary lists as translations, in source order.

        ``src_length`` / ``tgt_length``: the length of the whole sentence when the text is a cut
        prefix of it, so that ``repeats="nearest"`` compares positions relative to the whole sentence.
        """
        src_units = self.src.segment(src_text)
        if not src_units:
            return []
        tgt_units = self.tgt.segment(tgt_text)
        if not tgt_units:
            return []
        # Target units by entry id, so that each source unit probes only its own translations.
        by_id: dict[int, list[int]] = {}
        for j, unit in enumerate(tgt_units):
            by_id.setdefault(unit[2], []).append(j)
        translations, pairs = self.translations, []
        nearest = self.repeats == "nearest"
        used = [False] * len(tgt_units)
        src_len = 2 * max(len(src_text) if src_length is None else src_length, 1)
        tgt_len = 2 * max(len(tgt_text) if tgt_length is None else tgt_length, 1)
        for s0, s1, s_id in src_units:
            wanted = translations[s_id]
            if len(wanted) <= len(by_id):
                candidates = [j for t_id in wanted if t_id in by_id for j in by_id[t_id]]
            else:
                candidates = [j for t_id, js in by_id.items() if t_id in wanted for j in js]
            if not candidates:
                continue
            if len(candidates) == 1:  # the common case: no choice to make
                j = candidates[0]
                if not (nearest and used[j]):
                    used[j] = True
                    pairs.append(((s0, s1), tgt_units[j][:2]))
                continue
            candidates.sort()
            if not nearest:
                pairs.extend(((s0, s1), tgt_units[j][:2]) for j in candidates)
                continue
            best, best_distance = -1, 2.0
            position = (s0 + s1) / src_len
            for j in candidates:
                if not used[j]:
                    distance = abs((tgt_units[j][0] + tgt_units[j][1]) / tgt_len - position)
                    if distance < best_distance:
                        best, best_distance = j, distance
            if best >= 0:
                used[best] = True
                pairs.append(((s0, s1), tgt_units[best][:2]))
        return pairs


def dictionary_format(path: str | Path) -> str:
    """``"tsv"``, ``"tei"`` or ``"muse"`` from a dictionary file's name (``.gz`` ignored)."""
    name = Path(path).name.removesuffix(".gz")
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    kinds = {"tsv": "tsv", "tei": "tei", "xml": "tei", "txt": "muse"}
    if suffix not in kinds:
        raise InputError(path, None, "unknown dictionary format (expected .tsv, .tei, .xml or .txt, optionally .gz)")
    return kinds[suffix]


def _is_unspaced(segmentation: str, lang: str | None, entries: Sequence[str]) -> bool:
    if segmentation != "auto":
        return segmentation == "chars"
    if lang:
        return base_language(lang) in UNSPACED_LANGUAGES
    written = [e for e in entries if e.strip()]
    unspaced = sum(1 for e in written if _UNSPACED_CHAR.search(e))
    return bool(written) and unspaced * 2 > len(written)


# --------------------------------------------------------------------------------------------------
# Character spans -> subword spans.


def char_to_token_spans(
    offsets: Sequence[tuple[int, int]],
    char_span: CharSpan,
    ids: Sequence[int] | None = None,
    lone_space_id: int | None = None,
) -> tuple[int, int] | None:
    """Subword index span ``(start, end)`` (end exclusive) of the tokens overlapping ``char_span``.

    ``offsets`` is a fast tokenizer's offset mapping (non-decreasing, as for every HF fast tokenizer).
    Zero-width tokens never overlap.  With ``ids`` and ``lone_space_id``, a lone ``▁`` piece at either
    edge is dropped.  Returns ``None`` when no token overlaps (e.g. the word was truncated away).
    """
    c0, c1 = char_span
    start = bisect.bisect_right(offsets, c0, key=_end_of)  # first token ending after c0
    end = bisect.bisect_left(offsets, c1, key=_start_of)  # tokens starting before c1
    if lone_space_id is not None and ids is not None:
        while start < end and ids[start] == lone_space_id:
            start += 1
        while end > start and ids[end - 1] == lone_space_id:
            end -= 1
    return (start, end) if start < end else None


def _end_of(offset: tuple[int, int]) -> int:
    return offset[1]


def _start_of(offset: tuple[int, int]) -> int:
    return offset[0]


# --------------------------------------------------------------------------------------------------
# Corpus mining.


@dataclass
class MinedPair:
    """One parallel pair: token ids of each side (no special tokens) and the matched subword spans,
    rows ``(src_tok_start, src_tok_end, tgt_tok_start, tgt_tok_end)``, end exclusive."""

    src_ids: list[int]
    tgt_ids: list[int]
    spans: list[tuple[int, int, int, int]]


@dataclass
class MiningStats:
    """Counts over mined pairs; ``truncated`` counts pairs with a side cut to ``max_length`` tokens,
    ``unmappable`` word matches dropped because no subword covers them."""

    pairs: int = 0
    pairs_with_match: int = 0
    matches: int = 0
    unmappable: int = 0
    truncated: int = 0

    def add(self, other: "MiningStats") -> None:
        self.pairs += other.pairs
        self.pairs_with_match += other.pairs_with_match
        self.matches += other.matches
        self.unmappable += other.unmappable
        self.truncated += other.truncated

    def as_dict(self) -> dict:
        return {
            "pairs": self.pairs,
            "pairs_with_match": self.pairs_with_match,
            "share_with_match": self.pairs_with_match / self.pairs if self.pairs else 0.0,
            "matches": self.matches,
            "matches_per_pair": self.matches / self.pairs if self.pairs else 0.0,
            "unmappable": self.unmappable,
            "truncated": self.truncated,
        }


def backend_of(tokenizer):
    """The ``tokenizers.Tokenizer`` behind a transformers fast tokenizer (or the object itself)."""
    from tokenizers import Tokenizer

    backend = tokenizer if isinstance(tokenizer, Tokenizer) else getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer: span mining needs offsets")
    # A private copy, so that padding / truncation set on the caller's tokenizer cannot leak in.
    backend = Tokenizer.from_str(backend.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


class _BatchMiner:
    """Tokenise a batch of pairs in one call and map the miner's word pairs to subword spans.

    The tokenizer releases the GIL, so the batch is encoded on a helper thread while this thread runs
    the (pure Python) dictionary matching, which needs only the texts; the spans are mapped once both
    are done.  Set ``overlap=False`` to run the two one after the other.
    """

    def __init__(self, miner: SynonymMiner, backend, max_length: int | None, overlap: bool = True):
        self.miner, self.backend, self.max_length = miner, backend, max_length
        self.lone_space_id = backend.token_to_id("▁")
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="veco2-encode") if overlap else None

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.shutdown()

    def _encode(self, pairs):
        return self.backend.encode_batch([s for s, _ in pairs] + [t for _, t in pairs], add_special_tokens=False)

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[MinedPair], MiningStats]:
        n = len(pairs)
        pending = self._encoder.submit(self._encode, pairs) if self._encoder is not None else None
        match, limit = self.miner.match, self.max_length
        # While the batch is encoded, match the pairs short enough to be matched whole at little cost.
        # A pair that turns out longer than `limit` tokens is matched again on its cut text below, so
        # the result does not depend on this bound, only the time does.
        bound = None if limit is None else EARLY_MATCH_CHARS_PER_TOKEN * max(limit, 1)
        early = [match(s, t) if bound is None or (len(s) <= bound and len(t) <= bound) else None for s, t in pairs]
        encodings = pending.result() if pending is not None else self._encode(pairs)
        stats, out = MiningStats(pairs=n), []
        lone = self.lone_space_id
        for i, word_pairs in enumerate(early):
            src_enc, tgt_enc = encodings[i], encodings[n + i]
            src_long = limit is not None and len(src_enc) > limit
            tgt_long = limit is not None and len(tgt_enc) > limit
            if src_long or tgt_long:
                stats.truncated += 1
                src_text, tgt_text = pairs[i]
                for encoding, long in ((src_enc, src_long), (tgt_enc, tgt_long)):
                    if long:  # in Rust, before ids and offsets become Python lists of the whole line
                        encoding.truncate(limit)
                word_pairs = match(self._cut(src_text, src_enc.offsets, self.miner.src) if src_long else src_text,
                                   self._cut(tgt_text, tgt_enc.offsets, self.miner.tgt) if tgt_long else tgt_text,
                                   len(src_text), len(tgt_text))
            elif word_pairs is None:
                word_pairs = match(*pairs[i])
            src_ids, tgt_ids = src_enc.ids, tgt_enc.ids
            spans = []
            if word_pairs:
                src_offsets, tgt_offsets = src_enc.offsets[: len(src_ids)], tgt_enc.offsets[: len(tgt_ids)]
                for src_span, tgt_span in word_pairs:
                    s = char_to_token_spans(src_offsets, src_span, src_ids, lone)
                    t = char_to_token_spans(tgt_offsets, tgt_span, tgt_ids, lone)
                    if s is None or t is None:
                        stats.unmappable += 1
                    else:
                        spans.append((s[0], s[1], t[0], t[1]))
            if spans:
                stats.pairs_with_match += 1
                stats.matches += len(spans)
            out.append(MinedPair(src_ids, tgt_ids, spans))
        return out, stats

    def _cut(self, text: str, offsets: Sequence[tuple[int, int]], side: _Side) -> str:
        """The prefix of ``text`` that its first ``max_length`` tokens (``offsets``, the offsets of at
        least those) cover, up to the end of the word the last of them is in (space-delimited side)."""
        kept = min(self.max_length, len(offsets))
        if kept <= 0:
            return ""
        end = max(offsets[kept - 1][1], 0)
        if not side.unspaced and 0 < end < len(text):
            word = _word_pattern(text)
            if word.fullmatch(text, end - 1, end):  # the cut falls inside a word: keep the whole word
                rest = word.match(text, end)
                if rest is not None:
                    end = rest.end()
        return text[:end]


#: Pairs up to this many characters per token of ``max_length`` on each side are matched while the
#: batch is being encoded (docs/data.md#dictionary-synonym-mining, point 5); longer ones after, on their cut text.
EARLY_MATCH_CHARS_PER_TOKEN = 8


_WORKER: _BatchMiner | None = None


def _init_worker(miner: SynonymMiner, tokenizer_json: str, max_length: int | None, overlap: bool) -> None:
    from tokenizers import Tokenizer

    global _WORKER
    _WORKER = _BatchMiner(miner, Tokenizer.from_str(tokenizer_json), max_length, overlap)


def _mine_in_worker(pairs):
    return _WORKER(pairs)


def _batches(pairs: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    batch = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def mine_corpus(
    pairs: Iterable[tuple[str, str]],
    miner: SynonymMiner,
    tokenizer,
    *,
    batch_size: int = 1024,
    num_workers: int = 1,
    max_length: int | None = None,
    stats: MiningStats | None = None,
    overlap: bool = True,
) -> Iterator[MinedPair]:
    """Tokenise and mine ``(source, target)`` pairs; yields one :class:`MinedPair` per input pair, in order.

    Args:
        pairs: any iterable (read lazily, ``batch_size`` at a time).
        miner: the :class:`SynonymMiner` of this language pair.
        tokenizer: a transformers fast tokenizer or a ``tokenizers.Tokenizer``; each batch of
            ``2 * batch_size`` texts is encoded in one call (no special tokens).
        num_workers: 1 = in this process (the tokenizer still uses its own threads); more = that many
            processes, each mining whole batches, with at most ``2 * num_workers`` batches in flight.
        max_length: cut each side to this many tokens before matching (docs/data.md#dictionary-synonym-mining, point 5;
            cut pairs are counted in ``stats.truncated``); None keeps everything.
        stats: if given, updated with the counts of every batch as it is yielded.
        overlap: encode each batch on a helper thread while matching it (the tokenizer releases the
            GIL); False runs them one after the other (same result).
    """
    if batch_size < 1 or num_workers < 1:
        raise ConfigError(f"batch_size ({batch_size}) and num_workers ({num_workers}) must be >= 1")
    backend = backend_of(tokenizer)
    stats = stats if stats is not None else MiningStats()
    if num_workers == 1:
        mine = _BatchMiner(miner, backend, max_length, overlap)
        try:
            for batch in _batches(pairs, batch_size):
                mined, batch_stats = mine(batch)
                stats.add(batch_stats)
                yield from mined
        finally:
            mine.close()
        return
    import multiprocessing

    # "spawn": forking after the tokenizer's thread pool has run can deadlock it.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        num_workers, mp_context=context, initializer=_init_worker, initargs=(miner, backend.to_str(), max_length, overlap)
    ) as pool:
        in_flight: collections.deque = collections.deque()
        for batch in _batches(pairs, batch_size):
            in_flight.append(pool.submit(_mine_in_worker, batch))
            if len(in_flight) >= 2 * num_workers:
                mined, batch_stats = in_flight.popleft().result()
                stats.add(batch_stats)
                yield from mined
        while in_flight:
            mined, batch_stats = in_flight.popleft().result()
            stats.add(batch_stats)
            yield from mined


# --------------------------------------------------------------------------------------------------
# Storage beside tokenized shards.


def pack_spans(per_pair: Sequence[Sequence[tuple[int, int, int, int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair span lists -> (``spans`` int32 ``[M, 4]``, ``offsets`` int64 ``[N + 1]``)."""
    counts = np.fromiter((len(s) for s in per_pair), dtype=np.int64, count=len(per_pair))
    offsets = np.zeros(len(per_pair) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = [row for spans in per_pair for row in spans]
    spans = np.asarray(flat, dtype=np.int32).reshape(len(flat), 4)
    return spans, offsets


def save_spans(path: str | Path, spans: np.ndarray, offsets: np.ndarray) -> None:
    """Write the span arrays atomically to ``path`` (``.npz``, format in ``docs/data.md``)."""
    spans = np.asarray(spans, dtype=np.int32)
    offsets = np.asarray(offsets, dtype=np.int64)
    _check_spans(path, spans, offsets)
    savez_reproducible(path, spans=spans, offsets=offsets, format_version=np.int64(SPANS_FORMAT_VERSION))


def savez_reproducible(path: str | Path, **arrays: np.ndarray | Path) -> None:
    """``np.savez`` (uncompressed, the same entries), atomically, with a fixed entry time instead of
    the clock's, so that the same arrays give the same bytes.  A value may be the path of a ``.npy``
    file instead, copied into the archive piece by piece (an entry is the bytes of a ``.npy`` file)."""
    import shutil
    import zipfile

    with atomic_write(path, "wb") as handle:
        with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(entry, "w", force_zip64=True) as out:
                    if isinstance(array, Path):
                        with open(array, "rb") as source:
                            shutil.copyfileobj(source, out, 1 << 20)
                    else:
                        np.lib.format.write_array(out, np.asanyarray(array), allow_pickle=False)


def load_spans(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(spans, offsets)`` written by :func:`save_spans`; a malformed file raises :class:`InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            version = int(data["format_version"])
            spans, offsets = data["spans"], data["offsets"]
    except (ValueError, KeyError, OSError, EOFError) as err:
        raise InputError(path, None, f"not a span file ({type(err).__name__}: {err})") from None
    if version != SPANS_FORMAT_VERSION:
        raise InputError(path, None, f"span format version {version}, this veco2 reads {SPANS_FORMAT_VERSION}")
    _check_spans(path, spans, offsets)
    return spans, offsets


def _check_spans(path, spans: np.ndarray, offsets: np.ndarray) -> None:
    if spans.ndim != 2 or spans.shape[1] != 4:
        raise InputError(path, None, f"spans must have shape [M, 4], found {list(spans.shape)}")
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(spans):
        raise InputError(path, None, f"offsets must run from 0 to {len(spans)} (number of spans)")
    if np.any(np.diff(offsets) < 0):
        raise InputError(path, None, "offsets decrease")
    if len(spans) and (np.any(spans[:, 0] >= spans[:, 1]) or np.any(spans[:, 2] >= spans[:, 3]) or spans.min() < 0):
        raise InputError(path, None, "a span is empty or negative")


def spans_of_pair(spans: np.ndarray, offsets: np.ndarray, index: int) -> np.ndarray:
    """Rows of pair ``index``: ``spans[offsets[index]:offsets[index + 1]]``."""
    return spans[offsets[index] : offsets[index + 1]]


__all__ = [
    "UNSPACED_LANGUAGES",
    "MinedPair",
    "MiningStats",
    "SynonymMiner",
    "backend_of",
    "base_language",
    "char_to_token_spans",
    "dictionary_format",
    "load_spans",
    "mine_corpus",
    "normalize",
    "pack_spans",
    "save_spans",
    "savez_reproducible",
    "spans_of_pair",
]

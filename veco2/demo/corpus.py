"""Build the offline DEMO corpus of veco2 from real translated text shipped in Debian packages.

Parallel sentences are LibreOffice translations (``libreoffice-l10n-LANG``; Swahili from
``tuxpaint-data`` and ``pidgin-data``), dictionaries FreeDict's (or one-word LibreOffice UI labels).
It is DEMO data: its scores must never be compared with the VECO 2.0 paper's numbers.  Loader API:
:func:`demo_data_dir`, :func:`demo_languages`, :func:`demo_parallel`, :func:`demo_dictionary`,
:func:`demo_monolingual`; CLI: ``veco2 data build-demo``.  Sources and pipeline:
``docs/demo.md#the-demo-corpus``.
"""

from __future__ import annotations

import argparse
import collections
import gettext
import gzip
import hashlib
import json
import logging
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, Veco2Error
from ..data.readers import read_dictionary, read_monolingual, read_parallel
from ..data.sources import script_share
from ..fileio import atomic_write, read_json, write_json, write_text

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Languages and their sources
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LanguageSource:
    """Where one language's demo data comes from, and which script its text must be in."""

    code: str  # XTREME / ISO 639-1 code used in file names
    scripts: tuple[str, ...]  # Unicode script name prefixes (see :func:`script_fraction`)
    libreoffice: str | None = None  # libreoffice-l10n-<this>; resource dir is derived
    freedict: str | None = None  # dict-freedict-eng-<this>
    gettext_packages: tuple[tuple[str, str], ...] = ()  # (package, locale dir) extra catalogues
    spaces: bool = True  # False for scripts written without spaces between words

    @property
    def libreoffice_dir(self) -> str | None:
        if self.libreoffice is None:
            return None
        lang, _, region = self.libreoffice.partition("-")
        return f"{lang}_{region.upper()}" if region else lang  # zh-cn -> zh_CN


LATIN, CYRILLIC = ("LATIN",), ("CYRILLIC",)
SOURCES: dict[str, LanguageSource] = {
    "de": LanguageSource("de", LATIN, "de", "deu"),
    "fr": LanguageSource("fr", LATIN, "fr", "fra"),
    "es": LanguageSource("es", LATIN, "es", "spa"),
    "ru": LanguageSource("ru", CYRILLIC, "ru", "rus"),
    "zh": LanguageSource("zh", ("CJK",), "zh-cn", None, spaces=False),
    "ar": LanguageSource("ar", ("ARABIC",), "ar", "ara"),
    "hi": LanguageSource("hi", ("DEVANAGARI",), "hi", "hin"),
    "sw": LanguageSource("sw", LATIN, None, "swh", (("tuxpaint-data", "sw"), ("pidgin-data", "sw"))),
    "ja": LanguageSource("ja", ("CJK", "HIRAGANA", "KATAKANA"), "ja", "jpn", spaces=False),
    "tr": LanguageSource("tr", LATIN, "tr", "tur"),
    "el": LanguageSource("el", ("GREEK",), "el", "ell"),
    "bg": LanguageSource("bg", CYRILLIC, "bg", "bul"),
    "vi": LanguageSource("vi", LATIN, "vi", None),
    "ko": LanguageSource("ko", ("HANGUL", "CJK"), "ko", None),
    "th": LanguageSource("th", ("THAI",), "th", None, spaces=False),
    "fi": LanguageSource("fi", LATIN, "fi", "fin"),
    "id": LanguageSource("id", LATIN, "id", "ind"),
}
# fi id ko: TyDiQA's official languages (with en ar ru) so its demo needs no non-official ones.
DEFAULT_LANGUAGES = ["de", "fr", "es", "ru", "zh", "ar", "hi", "sw", "ja", "tr", "el", "bg", "fi", "id", "ko"]


@dataclass
class BuildOptions:
    """Filters and sizes; defaults are the demo's choices, documented in DATA_CARD.md."""

    seed: int = 13
    min_en_words: int = 3  # drop one/two-word UI labels where sentences are wanted
    max_en_words: int = 50
    max_chars: int = 300
    min_script_fraction: float = 0.6  # target letters in the language's script
    max_length_ratio: float = 3.0  # char-length ratio bound, only between space-delimited scripts
    dev_size: int = 500
    test_size: int = 500
    min_train_after_split: float = 0.5  # small languages: dev+test take at most half the pairs
    max_train_pairs: int = 20000  # cap per language to keep the committed corpus small
    max_dict_entries: int = 8000
    max_translations_per_word: int = 3  # FreeDict order: first-listed senses first
    min_dict_entries: int = 1000  # below this, FreeDict is supplemented with UI-label pairs


# ---------------------------------------------------------------------------------------------
# Cleaning (pure functions, unit-tested)
# ---------------------------------------------------------------------------------------------

PRODUCT_NAMES = {"%PRODUCTNAME": "LibreOffice", "%PRODUCTVERSION": "7.4", "%PRODUCTEXTENSION": ""}

_CJK_MNEMONIC = re.compile(r"\s*[(（][_~&][^\s()（）][)）]")  # "削除(_D)", "保存(~S)"
_TILDE_MNEMONIC = re.compile(r"~(?=\S)")
_AMP_MNEMONIC = re.compile(r"(?<![&\w])&(?=\w)|(?<=\w)&(?=\w)(?!\w*;)")
_UNDERSCORE_MNEMONIC = re.compile(r"(?<!_)_(?=[^\s_])")
_PLACEHOLDER = re.compile(
    r"%[-+ #0]*\d*(?:\.\d+)?l{0,2}[sdifuxXcpgen%]"  # printf: %s %d %5.2f %%
    r"|%\d+|\$\d+|%[A-Za-z][A-Za-z_]*%?"  # %1 $1 %NAME %NAME%
    r"|\$\([^)]*\)|\$\{[^}]*\}|\$[A-Z][A-Z0-9_]*\$?"  # $(ARG1) ${x} $ARG$
    r"|\{[^{}]*\}|<[^<>]+>|&[a-z]+;|&#\d+;"  # {0} {name} <tag> &amp;
    r"|\\[nt]|https?://|www\.|\S+\.[a-z]{2,4}/"  # escapes, URLs
)


def strip_accelerators(text: str) -> str:
    """Remove keyboard-accelerator markers: ``~``/``&``/``_`` mnemonics and CJK ``(_X)`` suffixes.

    ``"~Save As"`` -> ``"Save As"``; ``"Save &As"`` -> ``"Save As"``; ``"NU_LL"`` -> ``"NULL"``;
    ``"削除(_D)"`` -> ``"削除"``.  A lone ``&`` between spaces (``"A & B"``) and ``&&`` are kept.
    """
    text = _CJK_MNEMONIC.sub("", text)
    text = _TILDE_MNEMONIC.sub("", text)
    text = _AMP_MNEMONIC.sub("", text)
    return _UNDERSCORE_MNEMONIC.sub("", text)


def substitute_product_names(text: str) -> str:
    """Replace LibreOffice's constant product placeholders (same on both sides) by their value."""
    for placeholder, value in PRODUCT_NAMES.items():
        text = text.replace(placeholder, value)
    return text


def normalize_space(text: str) -> str:
    """Collapse every whitespace run (tabs, newlines, NBSP) into one space; strip the ends."""
    return " ".join(text.split())


def has_placeholder(text: str) -> bool:
    """True if the text contains a format-string placeholder, markup, an escape or a URL.

    Such strings are *dropped*, not edited: removing ``%s`` leaves a broken sentence.
    """
    return _PLACEHOLDER.search(text) is not None


def clean_message(text: str) -> str:
    """Accelerators out, product names in, whitespace normalised (also removes any tab)."""
    return normalize_space(strip_accelerators(substitute_product_names(text)))


def script_fraction(text: str, scripts: tuple[str, ...]) -> float:
    """Fraction of the letters of ``text`` whose script is one of ``scripts`` (0.0 if no letters: the
    demo builder wants text, not numbers)."""
    return script_share(text, scripts, without_letters=0.0)


def dedup_key(text: str) -> str:
    """Key for duplicate detection: case-folded, whitespace-normalised, final punctuation stripped."""
    return normalize_space(text).casefold().rstrip(" .:!?。：！？…")


def keep_sentence_pair(en: str, target: str, source: LanguageSource, opts: BuildOptions) -> str | None:
    """Return ``None`` if the cleaned pair is a good demo sentence pair, else the drop reason."""
    if not en or not target:
        return "empty"
    if has_placeholder(en) or has_placeholder(target):
        return "placeholder"
    words = len(en.split())
    if words < opts.min_en_words:
        return "too short"
    if words > opts.max_en_words or len(en) > opts.max_chars or len(target) > opts.max_chars:
        return "too long"
    if script_fraction(en, LATIN) < 0.9:
        return "source script"
    if script_fraction(target, source.scripts) < opts.min_script_fraction:
        return "target script"
    if dedup_key(en) == dedup_key(target):
        return "untranslated"
    if source.spaces and not (1 / opts.max_length_ratio <= len(target) / len(en) <= opts.max_length_ratio):
        return "length ratio"
    return None


# ---------------------------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------------------------


@dataclass
class Package:
    name: str
    version: str
    sha256: str
    deb: Path
    root: Path  # unpacked tree

    def manifest(self) -> dict:
        return {"package": self.name, "version": self.version, "sha256": self.sha256, "deb": self.deb.name}


class DebianCache:
    """Download (``apt-get download``) and unpack (``dpkg-deb -x``) packages into a cache dir."""

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._updated = False

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=self.cache_dir, capture_output=True, text=True)

    def get(self, name: str) -> Package:
        debs = sorted(self.cache_dir.glob(f"{name}_*.deb"))
        if not debs:
            result = self._run("apt-get", "download", name)
            if result.returncode != 0 and not self._updated:
                self._updated = True  # package lists may be stale or absent: update once, retry
                self._run("apt-get", "update")
                result = self._run("apt-get", "download", name)
            if result.returncode != 0:
                raise Veco2Error(f"apt-get download {name} failed: {result.stderr.strip().splitlines()[-1:]}")
            debs = sorted(self.cache_dir.glob(f"{name}_*.deb"))
        deb = debs[-1]
        root = self.cache_dir / "x" / name
        if not (root / ".unpacked").exists():
            root.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            (root / ".unpacked").write_text(deb.name)
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        sha = hashlib.sha256(deb.read_bytes()).hexdigest()
        return Package(name, version, sha, deb, root)


def read_mo_catalogue(path: Path) -> dict[str, str]:
    """msgid -> msgstr of a gettext ``.mo`` file (context prefix removed, plural entries skipped)."""
    with open(path, "rb") as handle:
        catalogue = gettext.GNUTranslations(handle)._catalog  # noqa: SLF001 - the public API hides it
    messages: dict[str, str] = {}
    for key, value in catalogue.items():
        if not isinstance(key, str) or not key or not value:
            continue  # plural forms ((msgid, n) keys) and the header
        messages.setdefault(key.split("\x04", 1)[-1], value)
    return messages


def read_dictd(index_path: Path, dict_path: Path) -> list[tuple[str, str]]:
    """(headword, entry body) pairs of a dictd database (``.index`` + gzip/dictzip ``.dict.dz``)."""
    data = gzip.open(dict_path).read() if dict_path.suffix == ".dz" else dict_path.read_bytes()
    entries = []
    for number, line in enumerate(index_path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 3:
            raise InputError(index_path, number, "dictd index line needs headword<TAB>offset<TAB>length")
        start, length = _b64_number(parts[1]), _b64_number(parts[2])
        entries.append((parts[0], data[start:start + length].decode("utf-8", errors="replace")))
    return entries


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64_number(text: str) -> int:
    value = 0
    for char in text:
        value = value * 64 + _B64.index(char)
    return value


_DICTD_SENSE = re.compile(r"^\d+\.\s+")
_BRACKETS = re.compile(r"<[^>]*>|\[[^\]]*\]|\([^)]*\)|\{[^}]*\}|\"[^\"]*\"")


def dictd_translations(body: str) -> list[str]:
    """Translation candidates of one FreeDict dictd entry body.

    FreeDict dictd entries are: a headword line (``word /ipa/ <pos>``), then either numbered
    sense lines (``1. a, b``) or one translation line, optionally followed by English gloss
    lines, indented examples and ``see:`` / ``Synonyms:`` lines.  Taken: the numbered lines if
    any, else the first non-indented line after the headword; split on ``,`` ``;`` ``.``; POS
    tags, brackets and quotes removed.  Gloss lines are therefore not taken (they come after).
    Affixes and compound stems (``-mme``, ``en/-än``, ``Luft-``) are not words and are dropped.
    """
    lines = body.split("\n")[1:]
    numbered = [_DICTD_SENSE.sub("", l) for l in lines if _DICTD_SENSE.match(l)]
    if numbered:
        candidates = numbered
    else:
        plain = [l for l in lines if l.strip() and not l[0].isspace()]
        candidates = plain[:1]
    out: list[str] = []
    for line in candidates:
        line = _BRACKETS.sub(" ", line).replace("~", " ")  # eng-hin joins multi-word items with ~
        line = line.replace("\u0301", "").replace("\u0300", "")  # stress marks (eng-bul, eng-rus)
        for part in re.split(r"[,;]|\.\s", line):
            part = part.strip(" .")
            if part.startswith("-") or part.endswith("-") or "/-" in part:
                continue  # eng-fin: "the" -> "-mme, -ni" (possessive suffixes), eng-deu: "Luft-"
            part = normalize_space(part)
            if part and part not in out:
                out.append(part)
    return out


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


@dataclass
class LanguageHarvest:
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)  # en dedup key -> (en, x)
    labels: list[tuple[str, str]] = field(default_factory=list)  # cleaned one-word labels
    dropped: collections.Counter = field(default_factory=collections.Counter)
    packages: list[Package] = field(default_factory=list)


def harvest_sentences(source: LanguageSource, cache: DebianCache, opts: BuildOptions) -> LanguageHarvest:
    """Collect, clean, filter and deduplicate the sentence pairs of one language."""
    harvest = LanguageHarvest()
    mo_files: list[Path] = []
    if source.libreoffice:
        package = cache.get(f"libreoffice-l10n-{source.libreoffice}")
        harvest.packages.append(package)
        pattern = f"usr/lib/libreoffice/program/resource/{source.libreoffice_dir}/LC_MESSAGES/*.mo"
        mo_files += sorted(package.root.glob(pattern))
    for name, locale in source.gettext_packages:
        package = cache.get(name)
        harvest.packages.append(package)
        mo_files += sorted(package.root.glob(f"usr/share/locale/{locale}/LC_MESSAGES/*.mo"))
    if (source.libreoffice or source.gettext_packages) and not mo_files:
        raise Veco2Error(f"{source.code}: no gettext catalogues found in {[p.name for p in harvest.packages]}")

    # English -> translations with counts; the most frequent translation wins (ties: smallest).
    translations: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    english_form: dict[str, str] = {}
    for mo in mo_files:
        for msgid, msgstr in read_mo_catalogue(mo).items():
            en, target = clean_message(msgid), clean_message(msgstr)
            harvest.labels.append((en, target))
            reason = keep_sentence_pair(en, target, source, opts)
            if reason:
                harvest.dropped[reason] += 1
                continue
            key = dedup_key(en)
            english_form.setdefault(key, en)
            translations[key][target] += 1
    seen_targets: set[str] = set()
    for key in sorted(translations):
        target = min(translations[key].items(), key=lambda item: (-item[1], item[0]))[0]
        target_key = dedup_key(target)
        if target_key in seen_targets:  # two English strings with one translation: keep the first
            harvest.dropped["duplicate target"] += 1
            continue
        seen_targets.add(target_key)
        harvest.pairs[key] = (english_form[key], target)
    return harvest


def split_pairs(harvests: dict[str, LanguageHarvest], opts: BuildOptions) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Assign every English sentence to one split, globally across languages.

    English keys are shuffled (seeded) and then ordered by how many languages translate them
    (most first), so dev/test are as multi-way parallel as possible.  Walking that order, a key
    goes to *test* while some language that has it still needs test pairs, then to *dev*
    likewise, else to *train*.  Because the split is decided per English sentence for all
    languages at once, no English sentence is in two splits of any language pair, and the
    target side was deduplicated per language, so target sentences are disjoint too.
    Small languages get at most ``(1 - min_train_after_split) / 2`` of their pairs in each of
    dev and test.
    """
    need: dict[str, dict[str, int]] = {}
    for lang, harvest in harvests.items():
        n = len(harvest.pairs)
        held_out = int(n * (1 - opts.min_train_after_split) / 2)
        need[lang] = {"test": min(opts.test_size, held_out), "dev": min(opts.dev_size, held_out)}
    coverage = collections.Counter(key for h in harvests.values() for key in h.pairs)
    keys = sorted(coverage)
    random.Random(opts.seed).shuffle(keys)
    keys.sort(key=lambda k: -coverage[k])  # stable: shuffled order within equal coverage
    splits = {lang: {"train": [], "dev": [], "test": []} for lang in harvests}
    for key in keys:
        langs = [lang for lang, h in harvests.items() if key in h.pairs]
        split = next((s for s in ("test", "dev") if any(need[l][s] > 0 for l in langs)), "train")
        for lang in langs:
            splits[lang][split].append(harvests[lang].pairs[key])
            if split != "train":
                need[lang][split] -= 1
    rng = random.Random(opts.seed + 1)
    for lang in splits:
        train = splits[lang]["train"]
        rng.shuffle(train)
        del train[opts.max_train_pairs:]
    return splits


def _is_word(text: str, source: LanguageSource | None) -> bool:
    if source is None:  # English
        return re.fullmatch(r"[a-z][a-z'-]*[a-z]", text) is not None
    if not text or any(c.isdigit() for c in text) or script_fraction(text, source.scripts) < 0.99:
        return False
    return (" " not in text) if source.spaces else len(text) <= 8


def freedict_pairs(source: LanguageSource, cache: DebianCache) -> tuple[list[tuple[str, str]], Package, str]:
    """Single-word (en, x) pairs from FreeDict eng-XXX, plus the package and its licence line."""
    package = cache.get(f"dict-freedict-eng-{source.freedict}")
    base = package.root / "usr/share/dictd" / f"freedict-eng-{source.freedict}"
    pairs: list[tuple[str, str]] = []
    licence = "see the package copyright file"
    for headword, body in read_dictd(Path(f"{base}.index"), Path(f"{base}.dict.dz")):
        if headword.startswith("00database"):
            if headword == "00databaseinfo":
                licence = _licence_sentence(body) or licence
            continue
        en = headword.strip().lower()
        if not _is_word(en, None):
            continue
        for target in dictd_translations(body):
            target = target.lower()
            if _is_word(target, source) and target != en:
                pairs.append((en, target))
    return list(dict.fromkeys(pairs)), package, licence


def _licence_sentence(info: str) -> str | None:
    """The 'Availability:' paragraph of a FreeDict database header (its licence statement)."""
    text = normalize_space(info)
    match = re.search(r"Availability:\s*(.*?)\s*(?:Publication date|Published at|Notes|Source\(s\)|The Project|Changelog):",
                      text)
    return match.group(1)[:400] if match else None


def label_pairs(harvest: LanguageHarvest, source: LanguageSource) -> list[tuple[str, str]]:
    """Single-word (en, x) pairs from one-word UI labels; up to 2 most frequent x per English word."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for en, target in harvest.labels:
        en, target = en.lower().rstrip(".:…"), target.lower().rstrip(".:…。：")
        if _is_word(en, None) and _is_word(target, source) and target != en:
            counts[en][target] += 1
    pairs = []
    for en in sorted(counts):
        for target, _ in sorted(counts[en].items(), key=lambda item: (-item[1], item[0]))[:2]:
            pairs.append((en, target))
    return pairs


def rank_dictionary(pairs: list[tuple[str, str]], english_counts: collections.Counter, limit: int,
                    seed: int, per_word: int = 3) -> list[tuple[str, str]]:
    """Keep at most ``per_word`` translations per English word (in source order) and at most
    ``limit`` pairs overall, English words frequent in the demo English text first."""
    kept_per_word: collections.Counter = collections.Counter()
    capped = []
    for en, target in pairs:
        if kept_per_word[en] < per_word:
            kept_per_word[en] += 1
            capped.append((en, target))
    pairs = capped
    words = sorted({en for en, _ in pairs})
    random.Random(seed).shuffle(words)
    words.sort(key=lambda w: -english_counts[w])
    rank = {w: i for i, w in enumerate(words)}
    return sorted(pairs, key=lambda p: (rank[p[0]], p[1]))[:limit]


def _write_lines(path: Path, lines: list[str]) -> None:
    """Atomic gzip write with a fixed mtime so rebuilds are byte-identical."""
    with atomic_write(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            gz.write("".join(line + "\n" for line in lines).encode("utf-8"))


def build_demo(out_dir: str | Path, cache_dir: str | Path, languages: list[str] | None = None,
               options: BuildOptions | None = None) -> dict:
    """Harvest, clean, split and write the demo corpus; return the manifest (also written)."""
    started = time.time()
    opts = options or BuildOptions()
    languages = list(languages or DEFAULT_LANGUAGES)
    unknown = [lang for lang in languages if lang not in SOURCES]
    if unknown:
        raise Veco2Error(f"unknown demo language(s) {unknown}; available: {sorted(SOURCES)}")
    out, cache = Path(out_dir), DebianCache(cache_dir)

    harvests = {}
    for lang in languages:
        harvests[lang] = harvest_sentences(SOURCES[lang], cache, opts)
        log.info("%s: %d clean pairs (dropped %s)", lang, len(harvests[lang].pairs), dict(harvests[lang].dropped))
    splits = split_pairs(harvests, opts)

    # English monolingual = English of every training pair; held-out English is never included
    # (guaranteed by the global split, re-checked here).
    held_out_en = {dedup_key(en) for s in splits.values() for name in ("dev", "test") for en, _ in s[name]}
    mono: dict[str, list[str]] = {"en": []}
    seen_en: set[str] = set()
    for lang in languages:
        for en, _ in splits[lang]["train"]:
            if dedup_key(en) not in seen_en and dedup_key(en) not in held_out_en:
                seen_en.add(dedup_key(en))
                mono["en"].append(en)
        mono[lang] = [x for _, x in splits[lang]["train"]]
    english_counts = collections.Counter(w.lower().strip(".,:;!?()\"'") for s in mono["en"] for w in s.split())

    dictionaries, dict_sources, sources = {}, {}, {}
    for lang in languages:
        source, harvest = SOURCES[lang], harvests[lang]
        pairs, origin = [], []
        if source.freedict:
            fd_pairs, package, licence = freedict_pairs(source, cache)
            pairs += fd_pairs
            origin.append({"kind": "FreeDict eng-" + source.freedict, "licence": licence, **package.manifest()})
        if len(pairs) < opts.min_dict_entries and harvest.labels:
            pairs += [p for p in label_pairs(harvest, source) if p not in set(pairs)]
            origin.append({"kind": "one-word UI labels of the sentence sources",
                           "packages": [p.name for p in harvest.packages], "licence": "as the sentence source"})
        dictionaries[lang] = rank_dictionary(list(dict.fromkeys(pairs)), english_counts, opts.max_dict_entries, opts.seed,
                                             opts.max_translations_per_word)
        dict_sources[lang] = origin
        sources[lang] = [
            {**p.manifest(), "licence": _package_licence(p)} for p in harvest.packages
        ]

    # Write everything, then the manifest last (a manifest means a complete corpus).
    counts = {}
    for lang in languages:
        for split in ("train", "dev", "test"):
            _write_lines(out / "parallel" / split / f"en-{lang}.tsv.gz", [f"{en}\t{x}" for en, x in splits[lang][split]])
        _write_lines(out / "mono" / f"{lang}.txt.gz", mono[lang])
        _write_lines(out / "dict" / f"en-{lang}.tsv.gz", [f"{en}\t{x}" for en, x in dictionaries[lang]])
        counts[lang] = {
            "parallel": {s: len(splits[lang][s]) for s in ("train", "dev", "test")},
            "clean_pairs_before_cap": len(harvests[lang].pairs),
            "dropped": dict(sorted(harvests[lang].dropped.items())),
            "mono_lines": len(mono[lang]),
            "dict_entries": len(dictionaries[lang]),
            "dict_headwords": len({en for en, _ in dictionaries[lang]}),
        }
    _write_lines(out / "mono" / "en.txt.gz", mono["en"])
    counts["en"] = {"mono_lines": len(mono["en"])}

    manifest = {
        "name": "veco2 offline demo corpus",
        "warning": "DEMO data (software UI strings and small dictionaries). Scores on it must never be "
                   "compared with the VECO 2.0 paper's numbers.",
        "languages": ["en", *languages],
        "build_command": f"veco2 data build-demo --out {out_dir} --cache {cache_dir} --languages {' '.join(languages)}",
        "options": opts.__dict__,
        "counts": counts,
        "sentence_sources": sources,
        "dictionary_sources": dict_sources,
        "build_seconds": round(time.time() - started, 1),
    }
    write_json(out / "manifest.json", manifest)
    write_text(out / "DATA_CARD.md", render_data_card(manifest))
    return manifest


def _package_licence(package: Package) -> str:
    """The licence of a l10n package's translations, from its Debian copyright file."""
    if package.name.startswith("libreoffice-l10n"):
        return "MPL-2.0 (LibreOffice translations; Debian copyright file)"
    copyright_file = package.root / "usr/share/doc" / package.name / "copyright"
    if copyright_file.exists():
        text = copyright_file.read_text(encoding="utf-8", errors="replace")
        found = re.findall(r"^License:\s*(\S.*)$", text, flags=re.M)
        if found:
            return f"{collections.Counter(found).most_common(1)[0][0]} (most common licence in its Debian copyright file)"
    return "see the package's Debian copyright file"


# ---------------------------------------------------------------------------------------------
# Data card
# ---------------------------------------------------------------------------------------------


def render_data_card(manifest: dict) -> str:
    opts = manifest["options"]
    rows = []
    for lang in manifest["languages"][1:]:
        c = manifest["counts"][lang]
        p = c["parallel"]
        rows.append(f"| {lang} | {p['train']} | {p['dev']} | {p['test']} | {c['mono_lines']} | {c['dict_entries']} |")
    sentence_rows = []
    for lang, packages in manifest["sentence_sources"].items():
        for p in packages:
            sentence_rows.append(f"| {lang} | `{p['package']}` | {p['version']} | {p['licence']} |")
    dict_rows = []
    for lang, origins in manifest["dictionary_sources"].items():
        for o in origins:
            if "package" in o:
                dict_rows.append(f"| {lang} | `{o['package']}` {o['version']} | {o['licence']} |")
            else:
                dict_rows.append(f"| {lang} | {o['kind']} ({', '.join(o['packages'])}) | as the sentence source |")
    return f"""# veco2 offline demo corpus — DATA CARD

**This is DEMO data.** It exists so that every veco2 stage can run end to end without network
access. It is built from software user-interface strings and small bilingual dictionaries, not
from the corpora of the VECO 2.0 paper. **Scores measured on it must never be compared with the
paper's numbers** (or with any XTREME leaderboard).

## Contents

| lang | parallel train | dev | test | mono lines | dict entries |
|---|---|---|---|---|---|
{chr(10).join(rows)}

English monolingual text: {manifest['counts']['en']['mono_lines']} lines (English side of all
training pairs).

Files (all gzipped UTF-8, one record per line):

* `parallel/{{train,dev,test}}/en-LANG.tsv.gz` — `English<TAB>LANG` sentence pairs
* `mono/LANG.txt.gz` — one sentence per line, training side only (never dev/test text)
* `dict/en-LANG.tsv.gz` — `english_word<TAB>LANG_word`, one-to-many as several lines
* `manifest.json` — sources (package, version, sha256 of the .deb), counts, options

## Sources and licences

Sentence pairs (msgid = English source string, msgstr = human translation):

| lang | Debian package | version | licence |
|---|---|---|---|
{chr(10).join(sentence_rows)}

Dictionaries:

| lang | source | licence |
|---|---|---|
{chr(10).join(dict_rows)}

The sha256 of every `.deb` is in `manifest.json`. Redistribution follows each source's licence
(LibreOffice translations MPL-2.0; FreeDict dictionaries GPL or CC-BY-SA as stated in each
database header; Tux Paint and Pidgin translations GPL-2+).

## Cleaning rules

1. Accelerator markers removed (`~File`, `&File`, `_File`, CJK `(_F)` suffixes); LibreOffice's
   constant product placeholders (`%PRODUCTNAME` ...) replaced by their value; whitespace
   (newlines, tabs) collapsed.
2. Pairs **dropped** if either side has a format placeholder (`%s`, `%1`, `$1`, `$(ARG1)`,
   `{{0}}`), markup (`<tag>`, `&amp;`), an escape or a URL.
3. English side: {opts['min_en_words']}–{opts['max_en_words']} words (one/two-word UI labels are not
   sentences), at most {opts['max_chars']} characters, Latin script.
4. Target side: at least {opts['min_script_fraction']:.0%} of its letters in the language's script;
   not identical to the English (untranslated); character-length ratio within
   1/{opts['max_length_ratio']:g}–{opts['max_length_ratio']:g} for space-delimited scripts.
5. Deduplication (case-insensitive, final punctuation ignored): one translation per English
   sentence (the most frequent), one English sentence per translation.
6. Splits are assigned per English sentence across all languages at once (seed {opts['seed']}),
   preferring sentences translated in many languages for dev/test ({opts['dev_size']} each;
   small languages at most a quarter of their pairs each). No English or target sentence
   appears in two splits. Training pairs are capped at {opts['max_train_pairs']} per language.
7. Dictionaries: single-word entries (lower-cased; target fully in the language's script).
   FreeDict dictd entries give their translation line(s), never the English gloss lines.
   Languages without an English→X FreeDict, or with fewer than {opts['min_dict_entries']} entries,
   get (or add) pairs from one-word UI labels (up to two most frequent translations per word).
   At most {opts['max_translations_per_word']} translations per English word (first-listed first) and
   {opts['max_dict_entries']} pairs, English words frequent in the demo English text first.

## Known limitations

* Domain: office-software UI and help tips; short, imperative, repetitive.
* Swahili has no LibreOffice translation: its few sentence pairs come from Tux Paint and Pidgin.
* UI-label dictionaries contain context-dependent translations (a label may be a verb or noun).

## Rebuild

```
{manifest['build_command']}
```

Needs `apt-get` and `dpkg-deb` (Debian/Ubuntu; `apt-get update` once; root not required for
`apt-get download` when the package lists are current). Deterministic for the same package
versions: the manifest records versions and sha256s. Last build took {manifest['build_seconds']} s.
"""


# ---------------------------------------------------------------------------------------------
# Loader API
# ---------------------------------------------------------------------------------------------


def demo_data_dir() -> Path:
    """The committed demo corpus inside the package (``veco2/demo_data``)."""
    return Path(__file__).resolve().parent.parent / "demo_data"


def demo_manifest() -> dict:
    return read_json(demo_data_dir() / "manifest.json")


def demo_languages() -> list[str]:
    """Languages of the demo corpus, English first (``["en", "de", ...]``)."""
    return list(demo_manifest()["languages"])


def _check_lang(lang: str, allow_en: bool = False) -> None:
    languages = demo_languages()
    if lang not in languages or (lang == "en" and not allow_en):
        raise Veco2Error(f"no demo data for language {lang!r}; available: {[l for l in languages if l != 'en' or allow_en]}")


def demo_parallel(lang: str, split: str = "train") -> list[tuple[str, str]]:
    """``(english, lang)`` sentence pairs of one split (``train``/``dev``/``test``)."""
    _check_lang(lang)
    if split not in ("train", "dev", "test"):
        raise Veco2Error(f"unknown split {split!r}; use train, dev or test")
    return list(read_parallel(demo_data_dir() / "parallel" / split / f"en-{lang}.tsv.gz"))


def demo_dictionary(lang: str) -> list[tuple[str, str]]:
    """``(english_word, lang_word)`` dictionary pairs (one-to-many as several pairs)."""
    _check_lang(lang)
    return read_dictionary(demo_data_dir() / "dict" / f"en-{lang}.tsv.gz")


def demo_monolingual(lang: str) -> list[str]:
    """Training-side sentences of ``lang`` (``"en"`` allowed)."""
    _check_lang(lang, allow_en=True)
    return list(read_monolingual(demo_data_dir() / "mono" / f"{lang}.txt.gz"))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="veco2 data build-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(demo_data_dir()), help="output directory (default: the package's demo_data)")
    parser.add_argument("--cache", required=True, help="download/unpack directory for .deb files")
    parser.add_argument("--languages", nargs="+", default=DEFAULT_LANGUAGES, help=f"from {sorted(SOURCES)}")
    parser.add_argument("--seed", type=int, default=BuildOptions.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = build_demo(args.out, args.cache, args.languages, BuildOptions(seed=args.seed))
    for lang in manifest["languages"]:
        print(lang, json.dumps({k: v for k, v in manifest["counts"][lang].items() if k != "dropped"}))
    print(f"built in {manifest['build_seconds']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

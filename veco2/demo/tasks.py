"""Build the embedded DEMO data for the 9 XTREME tasks from real offline sources.

**This is demo data.** Every task here is a small, learnable analogue of the real XTREME task, built
from real sentences (the demo corpus: LibreOffice translations) with labels from documented, seeded
procedures.  Scores on it are NOT comparable with published XTREME numbers.  Output: XTREME's
download layout plus ``README.md`` and ``manifest.json``.  Sentence pools, per-task constructions
and files: ``docs/demo.md#the-demo-xtreme-tasks``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import logging
import random
import re
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError, Veco2Error
from ..fileio import iter_lines, write_json, write_text
from ..provenance import sha256_file
from ..xtreme.registry import get_task, list_tasks

log = logging.getLogger(__name__)

TASKS = ("tatoeba", "bucc2018", "pawsx", "xnli", "udpos", "panx", "squad", "xquad", "mlqa", "tydiqa")

# XTREME's official test languages per task (the demo builds those the corpus has), read from the
# task registry (each task file's `languages`), so a demo file is never in a language it rejects.
XTREME_LANGS = {task: list(get_task(task).languages) for task in list_tasks()}
MIN_LANGS = 4  # the demo needs at least this many non-English test languages per task
QA_MIN_POOL = 300  # QA test sets need this many eval-pool sentences (3-sentence contexts, 200 questions)

# XTREME's Tatoeba file codes.
LANG3 = {
    "af": "afr", "ar": "ara", "bg": "bul", "bn": "ben", "de": "deu", "el": "ell", "es": "spa", "et": "est",
    "eu": "eus", "fa": "pes", "fi": "fin", "fr": "fra", "he": "heb", "hi": "hin", "hu": "hun", "id": "ind",
    "it": "ita", "ja": "jpn", "jv": "jav", "ka": "kat", "kk": "kaz", "ko": "kor", "ml": "mal", "mr": "mar",
    "nl": "nld", "pt": "por", "ru": "rus", "sw": "swh", "ta": "tam", "te": "tel", "th": "tha", "tl": "tgl",
    "tr": "tur", "ur": "urd", "vi": "vie", "zh": "cmn",
}
UNSPACED = {"zh", "ja", "th"}  # scripts written without spaces between words

# Hand-written affirmative / negative frames for the XNLI analogue ("{}" = the span).
NLI_FRAMES = {
    "en": ("It is true that {}", "It is not true that {}"),
    "de": ("Es stimmt, dass {}", "Es stimmt nicht, dass {}"),
    "fr": ("Il est vrai que {}", "Il n'est pas vrai que {}"),
    "es": ("Es cierto que {}", "No es cierto que {}"),
    "it": ("È vero che {}", "Non è vero che {}"),
    "pt": ("É verdade que {}", "Não é verdade que {}"),
    "nl": ("Het is waar dat {}", "Het is niet waar dat {}"),
    "ru": ("Верно, что {}", "Неверно, что {}"),
    "bg": ("Вярно е, че {}", "Не е вярно, че {}"),
    "el": ("Είναι αλήθεια ότι {}", "Δεν είναι αλήθεια ότι {}"),
    "zh": ("确实，{}", "并非{}"),
    "ja": ("{}というのは本当だ。", "{}というのは本当ではない。"),
    "ar": ("صحيح أن {}", "ليس صحيحا أن {}"),
    "hi": ("यह सच है कि {}", "यह सच नहीं है कि {}"),
    "tr": ("Doğrudur ki {}", "Doğru değil ki {}"),
    "sw": ("Ni kweli kwamba {}", "Si kweli kwamba {}"),
    "vi": ("Đúng là {}", "Không đúng là {}"),
    "th": ("เป็นความจริงที่ว่า {}", "ไม่เป็นความจริงที่ว่า {}"),
    "ko": ("{}는 사실이다.", "{}는 사실이 아니다."),
}

# Faker locale per language for PER / ORG names.
FAKER_LOCALES = {
    "en": "en_US", "de": "de_DE", "fr": "fr_FR", "es": "es_ES", "it": "it_IT", "pt": "pt_BR", "nl": "nl_NL",
    "ru": "ru_RU", "bg": "bg_BG", "el": "el_GR", "zh": "zh_CN", "ja": "ja_JP", "ar": "ar_SA", "hi": "hi_IN",
    "tr": "tr_TR", "sw": "sw", "ko": "ko_KR", "th": "th_TH", "vi": "vi_VN", "fa": "fa_IR", "fi": "fi_FI",
    "he": "he_IL", "hu": "hu_HU", "id": "id_ID", "et": "et_EE", "ka": "ka_GE", "bn": "bn_BD", "ta": "ta_IN",
}

# Apertium analyser/tagger per language: (package directory, mode prefix, tagger: "hmm" | "cg").
# rus-ukr's HMM tagger crashes in Debian 12 (segfault) and apertium-hin has none, so Russian and
# Hindi use the constraint grammar and keep only tokens whose remaining analyses agree on one UPOS.
APERTIUM = {
    "en": ("apertium-eng-spa", "eng-spa", "hmm"),
    "es": ("apertium-eng-spa", "spa-eng", "hmm"),
    "fr": ("apertium-fr-es", "fr-es", "hmm"),
    "ru": ("apertium-rus-ukr", "rus-ukr", "cg"),
    "bg": ("apertium-mkd-bul", "bul-mkd", "hmm"),
    "hi": ("apertium-hin", "hin", "cg"),
}
APERTIUM_TO_UPOS = {
    "n": "NOUN", "np": "PROPN", "vblex": "VERB", "vbser": "AUX", "vbhaver": "AUX", "vaux": "AUX",
    "vbmod": "AUX", "vbdo": "AUX", "adj": "ADJ", "adv": "ADV", "preadv": "ADV", "det": "DET",
    "predet": "DET", "prn": "PRON", "rel": "PRON", "pr": "ADP", "post": "ADP", "cnjcoo": "CCONJ",
    "cnjsub": "SCONJ", "cnjadv": "SCONJ", "num": "NUM", "ij": "INTJ", "part": "PART", "sent": "PUNCT",
    "cm": "PUNCT", "lpar": "PUNCT", "rpar": "PUNCT", "lquest": "PUNCT", "guio": "PUNCT", "apos": "PUNCT",
    "quot": "PUNCT", "punct": "PUNCT", "rquest": "PUNCT",
}

SIZES = {
    "tatoeba": 400, "bucc_half": 600, "train": 1000, "dev": 200, "test": 200,
    "qa_train": 800, "qa_dev": 200, "qa_test": 200, "tydiqa_train": 400,
}
MIN_TEST = 100  # a test language with fewer examples is skipped (and listed in the manifest)
BLANK = "_____"
TOKEN_RE = re.compile(r"\w+|[^\w\s]")
DEMO_NOTE = ("**DEMO DATA: built offline from LibreOffice translations, CLDR, Faker and Apertium by "
             "documented procedures. Its scores are NOT comparable with published XTREME numbers.**")


# ----------------------------------------------------------------------------------------------
# Corpus and pools
# ----------------------------------------------------------------------------------------------

def read_parallel(path: Path) -> list[tuple[str, str]]:
    """Read ``en<TAB>X`` lines; a line without exactly one tab is an :class:`InputError`."""
    pairs = []
    for number, line in iter_lines(path):
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise InputError(path, number, "expected 'english<TAB>translation'")
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def load_corpus(corpus_dir: Path) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """``{lang: {split: [(en, x), ...]}}`` for every ``parallel/test/en-LANG.tsv.gz``."""
    langs = sorted(p.name[3:-7] for p in (corpus_dir / "parallel" / "test").glob("en-*.tsv.gz"))
    if not langs:
        raise Veco2Error(f"{corpus_dir}/parallel/test: no en-LANG.tsv.gz files (build the demo corpus first)")
    corpus = {}
    for lang in langs:
        corpus[lang] = {}
        for split in ("train", "dev", "test"):
            path = corpus_dir / "parallel" / split / f"en-{lang}.tsv.gz"
            corpus[lang][split] = read_parallel(path) if path.exists() else []
    return corpus


def _hash01(text: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def side_of(english: str, seed: int) -> str:
    """Deterministic train/dev/test side of a non-retrieval pair, from its English sentence."""
    u = _hash01(english, seed)
    return "train" if u < 0.7 else "dev" if u < 0.8 else "test"


def n_words(lang: str, text: str) -> int:
    return len(text) // 2 if lang in UNSPACED else len(text.split())


def usable(lang: str, text: str) -> bool:
    """Sentence-like: 4-30 words (8-60 characters unspaced), no markup/placeholder leftovers."""
    if any(ch in text for ch in "\t<>{}[]%$#|\\~&_"):
        return False
    return 4 <= n_words(lang, text) <= 30


def segments(text: str) -> set[str]:
    """Sentence segments of a message (split after . ! ? and CJK stops), final stops stripped."""
    parts = re.split(r"(?<=[.!?。！？।])\s*", text)
    return {p.strip().rstrip(".!?。！？। ") for p in parts if len(p.strip()) >= 8}


class Pools:
    """Sentence pools per language and side, with test-split sentences removed."""

    def __init__(self, corpus: dict, seed: int):
        self.seed = seed
        self.langs = sorted(corpus)
        self.test_sentences = {s for lang in corpus for en, x in corpus[lang]["test"] for s in (en, x)}
        # LibreOffice messages share sentences ("Text is evaluated as zero." alone and inside a longer
        # message), so leakage is checked per sentence segment, not only per message.
        test_segments = {g for s in self.test_sentences for g in segments(s)}
        pairs = [(side_of(en, seed), lang, en, x) for lang in self.langs for split in ("train", "dev")
                 for en, x in corpus[lang][split]]
        pairs = [p for p in pairs if not (segments(p[2]) | segments(p[3])) & test_segments]
        train_segments = {g for side, _, en, x in pairs if side == "train" for g in segments(en) | segments(x)}
        self.by_side: dict[str, dict[str, list[str]]] = {}  # lang -> side -> sentences
        seen: dict[str, set] = collections.defaultdict(set)
        for side, lang, en, x in pairs:
            if side != "train" and (segments(en) | segments(x)) & train_segments:
                continue
            for code, text in (("en", en), (lang, x)):
                if usable(code, text) and text not in seen[code]:
                    seen[code].add(text)
                    self.by_side.setdefault(code, {}).setdefault(side, []).append(text)
        for code in self.by_side:
            for side in self.by_side[code]:
                self.by_side[code][side].sort()  # order independent of file order
        self.units = {code: ContentUnits(code, [s for v in self.by_side[code].values() for s in v])
                      for code in self.by_side}

    def get(self, lang: str, sides: Sequence[str]) -> list[str]:
        return [s for side in sides for s in self.by_side.get(lang, {}).get(side, [])]

    def eval_pool(self, lang: str) -> list[str]:
        """Test-set sentences: English uses the ``test`` side only, others ``dev`` + ``test``."""
        return self.get(lang, ["test"] if lang == "en" else ["dev", "test"])


class ContentUnits:
    """Frequency-proxy content words of one language (docs/demo.md#content-units)."""

    def __init__(self, lang: str, sentences: list[str], n_stop: int = 60, min_bigram_df: int = 3):
        self.lang = lang
        if lang in UNSPACED:
            df = collections.Counter()
            for s in sentences:
                df.update({s[i:i + 2] for i in range(len(s) - 1) if self._script_pair(s[i:i + 2])})
            self.bigrams = {b for b, c in df.items() if c >= min_bigram_df}
        else:
            tf = collections.Counter(t.lower() for s in sentences for t in TOKEN_RE.findall(s))
            self.stop = {t for t, _ in tf.most_common(n_stop)}

    @staticmethod
    def _script_pair(pair: str) -> bool:
        return all(ch.isalpha() and not ch.isascii() for ch in pair)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of content units in ``text``, non-overlapping, left to right."""
        if self.lang in UNSPACED:
            out, i = [], 0
            while i < len(text) - 1:
                if text[i:i + 2] in self.bigrams:
                    out.append((i, i + 2))
                    i += 2
                else:
                    i += 1
            return out
        return [m.span() for m in TOKEN_RE.finditer(text)
                if len(m.group()) >= 3 and m.group().isalpha() and m.group().lower() not in self.stop]


# ----------------------------------------------------------------------------------------------
# Retrieval: Tatoeba and BUCC (test split only)
# ----------------------------------------------------------------------------------------------

def clean_test_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Test-split pairs with both sides unique (so the gold alignment is unambiguous), sorted."""
    en_count = collections.Counter(en for en, _ in pairs)
    x_count = collections.Counter(x for _, x in pairs)
    keep = {(en, x) for en, x in pairs if en_count[en] == 1 and x_count[x] == 1 and en != x}
    return sorted(keep)


def build_tatoeba(corpus: dict, out: Path, rng: random.Random, counts: dict) -> None:
    for lang in sorted(corpus):
        if lang not in XTREME_LANGS["tatoeba"]:
            continue
        pairs = clean_test_pairs(corpus[lang]["test"])
        rng.shuffle(pairs)
        pairs = pairs[: SIZES["tatoeba"]]
        if len(pairs) < MIN_TEST:
            counts.setdefault("skipped", {}).setdefault("tatoeba", {})[lang] = f"only {len(pairs)} test pairs"
            continue
        code = LANG3[lang]
        write_lines(out / "tatoeba" / f"tatoeba.{code}-eng.{code}", [x for _, x in pairs])
        write_lines(out / "tatoeba" / f"tatoeba.{code}-eng.eng", [en for en, _ in pairs])
        counts.setdefault("tatoeba", {})[lang] = {"pairs": len(pairs)}


def build_bucc(corpus: dict, out: Path, rng: random.Random, counts: dict) -> None:
    for lang in sorted(lang for lang in XTREME_LANGS["bucc2018"] if lang in corpus):
        pairs = clean_test_pairs(corpus[lang]["test"])
        rng.shuffle(pairs)
        half = min(len(pairs) // 2, SIZES["bucc_half"])
        if half < MIN_TEST:
            counts.setdefault("skipped", {}).setdefault("bucc2018", {})[lang] = f"only {len(pairs)} test pairs"
            continue
        for split, chunk in (("dev", pairs[:half]), ("test", pairs[half: 2 * half])):
            n_gold, n_x_only = int(0.4 * len(chunk)), int(0.3 * len(chunk))
            gold = chunk[:n_gold]
            x_side = [x for _, x in gold] + [x for _, x in chunk[n_gold: n_gold + n_x_only]]
            en_side = [en for en, _ in gold] + [en for en, _ in chunk[n_gold + n_x_only:]]
            x_ids = _shuffled_ids(lang, x_side, rng)
            en_ids = _shuffled_ids("en", en_side, rng)
            base = out / "bucc2018" / f"{lang}-en.{split}"
            write_lines(f"{base}.{lang}", [f"{i}\t{s}" for s, i in sorted(x_ids.items(), key=lambda kv: kv[1])])
            write_lines(f"{base}.en", [f"{i}\t{s}" for s, i in sorted(en_ids.items(), key=lambda kv: kv[1])])
            write_lines(f"{base}.gold", sorted(f"{x_ids[x]}\t{en_ids[en]}" for en, x in gold))
            counts.setdefault("bucc2018", {}).setdefault(lang, {})[split] = {
                "gold": len(gold), lang: len(x_side), "en": len(en_side)}


def _shuffled_ids(prefix: str, sentences: list[str], rng: random.Random) -> dict[str, str]:
    order = list(range(len(sentences)))
    rng.shuffle(order)
    return {s: f"{prefix}-{k:06d}" for s, k in zip(sentences, order)}


# ----------------------------------------------------------------------------------------------
# Sentence-pair classification: PAWS-X and XNLI analogues
# ----------------------------------------------------------------------------------------------

def toggle_final_punct(text: str) -> str:
    """Meaning-neutral edit: drop a sentence-final full stop, or add one."""
    stops = ".。।۔"
    if text and text[-1] in stops:
        return text[:-1].rstrip()
    return text + ("。" if any("\u4e00" <= c <= "\u9fff" or "\u3040" <= c <= "\u30ff" for c in text) else ".")


def paws_pair(text: str, units: ContentUnits, vocabulary: list[str], rng: random.Random,
              label: int) -> tuple[str, str] | None:
    """``(s, s')``: label 1, ``s'`` is ``s``; label 0, every content unit of ``s`` is replaced by a
    content unit of other sentences of the pool (``vocabulary``) that ``s`` does not contain, so the
    function words and the word order stay and the meaning goes.  Either label gets the
    meaning-neutral final-punctuation edit with probability 1/2, so the edit is no cue.

    Not PAWS's word swap (same words, another order), nor a one-word substitution: in its
    fine-tuning budget a demo encoder learns neither (docs/demo.md has the measurements)."""
    spans = units.spans(text)
    if not spans:
        return None
    second = text
    if label == 0:
        present = {text[a:b].lower() for a, b in spans}
        for a, b in reversed(spans):  # right to left: the spans still to replace keep their offsets
            for _ in range(20):  # a few draws; a pool of one sentence's words has no other unit
                unit = rng.choice(vocabulary)
                if unit.lower() not in present:
                    break
            else:
                return None
            second = second[:a] + unit + second[b:]
    if rng.random() < 0.5:
        second = toggle_final_punct(second)
    return text, second


def build_pawsx(pools: Pools, out: Path, rng: random.Random, counts: dict) -> None:
    def make(lang, sentences, n):
        units = pools.units[lang]
        # the replacement words come from the same pool, so no split borrows another split's words
        vocabulary = sorted({s[a:b] for s in sentences for a, b in units.spans(s)})
        rows, labels = [], _balanced_labels([0, 1], n, rng)
        for s in _shuffled(sentences, rng):
            if len(rows) == n:
                break
            pair = paws_pair(s, units, vocabulary, rng, labels[len(rows)])
            if pair:
                rows.append(f"{pair[0]}\t{pair[1]}\t{labels[len(rows)]}")
        return rows

    _write_split_files(out / "pawsx", "pawsx", pools, make, counts, XTREME_LANGS["pawsx"], rng)


def nli_span(lang: str, text: str, rng: random.Random) -> str:
    """A sub-span of ``text`` it entails: the longest clause of >= 3 words, else 70 % of its words."""
    clauses = [c.strip() for c in re.split(r"[,;，；、]", text) if c.strip()]
    clauses = [c for c in clauses if n_words(lang, c) >= 3]
    if len(clauses) >= 2:
        return max(clauses, key=len)
    if lang in UNSPACED:
        k = max(3, round(0.7 * len(text)))
        return text[:k] if rng.random() < 0.5 else text[-k:]
    words = text.split()
    k = max(3, round(0.7 * len(words)))
    return " ".join(words[:k] if rng.random() < 0.5 else words[-k:])


def build_xnli(pools: Pools, out: Path, rng: random.Random, counts: dict) -> None:
    names = ["entailment", "neutral", "contradiction"]

    def make(lang, sentences, n):
        if lang not in NLI_FRAMES:
            return []
        affirm, negate = NLI_FRAMES[lang]
        units = pools.units[lang]
        by_unit = collections.defaultdict(list)
        for s in sentences:
            for a, b in units.spans(s):
                by_unit[s[a:b].lower()].append(s)
        rows, labels = [], _balanced_labels(names, n, rng)
        for p in _shuffled(sentences, rng):
            if len(rows) == n:
                break
            label = labels[len(rows)]
            if label == "neutral":
                related = [q for a, b in units.spans(p) for q in by_unit[p[a:b].lower()] if q != p]
                q = rng.choice(related) if related else rng.choice(sentences)
                if q == p:
                    continue
                hyp = (affirm if rng.random() < 0.5 else negate).format(nli_span(lang, q, rng))
            elif label == "entailment":
                span = nli_span(lang, p, rng)
                hyp = affirm.format(span) if rng.random() < 0.5 else span
            else:
                hyp = negate.format(nli_span(lang, p, rng))
            rows.append(f"{p}\t{hyp}\t{label}")
        return rows

    langs = [lang for lang in XTREME_LANGS["xnli"] if lang in NLI_FRAMES]
    _write_split_files(out / "xnli", "xnli", pools, make, counts, langs, rng)


# ----------------------------------------------------------------------------------------------
# Structured prediction: UD-POS (Apertium) and PAN-X (names inserted into real sentences)
# ----------------------------------------------------------------------------------------------

def parse_apertium_stream(stream: str) -> list[list[tuple[str, list[str]]]]:
    """Parse Apertium stream format into lines of ``(surface, [analysis, ...])``.

    Unanalysed non-space characters in blanks (e.g. ``"``) become tokens with analysis ``<blank>``.
    Lines are separated by superblanks containing a newline.
    """
    lines, tokens, i, n = [], [], 0, len(stream)

    def blank_tokens(text):
        tokens.extend((t, ["<blank>"]) for t in text.split())

    blank = []
    while i < n:
        ch = stream[i]
        if ch == "\\":
            blank.append(stream[i + 1] if i + 1 < n else "")
            i += 2
        elif ch == "[":
            j, content = i + 1, []
            while j < n and stream[j] != "]":
                if stream[j] == "\\":
                    j += 1
                content.append(stream[j])
                j += 1
            i = j + 1
            if "\n" in "".join(content):
                blank_tokens("".join(blank))
                blank = []
                lines.append(tokens)
                tokens = []
        elif ch == "^":
            blank_tokens("".join(blank))
            blank = []
            j, parts, cur = i + 1, [], []
            while j < n and stream[j] != "$":
                if stream[j] == "\\":
                    cur.append(stream[j + 1])
                    j += 2
                    continue
                if stream[j] == "/":
                    parts.append("".join(cur))
                    cur = []
                else:
                    cur.append(stream[j])
                j += 1
            parts.append("".join(cur))
            tokens.append((parts[0], parts[1:]))
            i = j + 1
        else:
            blank.append(ch)
            i += 1
    blank_tokens("".join(blank))
    if tokens:
        lines.append(tokens)
    return lines


def analysis_upos(analysis: str) -> str | None:
    """UPOS of one Apertium analysis (first tag; compounds ``a+b`` use their first part)."""
    if analysis == "<blank>":
        return None
    first = analysis.split("+")[0]
    tags = re.findall(r"<([^>]+)>", first)
    if first.startswith("*") or not tags:
        return None
    return APERTIUM_TO_UPOS.get(tags[0])


def token_upos(surface: str, analyses: list[str]) -> str | None:
    if analyses == ["<blank>"]:
        return "PUNCT" if all(unicodedata.category(c)[0] in "PS" for c in surface) else None
    tags = {analysis_upos(a) for a in analyses}
    if len(tags) != 1 or None in tags or " " in surface:
        return None
    return tags.pop()


def apertium_tag(lang: str, sentences: list[str], apertium_dir: Path) -> list[list[tuple[str, str]] | None]:
    """Tag ``sentences`` with Apertium; ``None`` for a sentence with any token lacking one UPOS."""
    package, mode, tagger = APERTIUM[lang]
    data = apertium_dir / package
    for tool in ("apertium-destxt", "lt-proc", "apertium-tagger", "cg-proc"):
        if shutil.which(tool) is None:
            raise Veco2Error(f"UD-POS demo needs Apertium: '{tool}' not found (apt-get install apertium cg3)")
    if not (data / f"{mode}.automorf.bin").exists():
        raise Veco2Error(f"{data}/{mode}.automorf.bin missing (apt-get download {package}; dpkg-deb -x)")
    steps = f"apertium-destxt | lt-proc -w '{data}/{mode}.automorf.bin'"
    if tagger == "cg":
        steps += f" | cg-proc -w '{data}/{mode}.rlx.bin'"
    else:
        steps += f" | apertium-tagger -g -p '{data}/{mode}.prob'"
    text = "\n".join(s.replace("\n", " ") for s in sentences) + "\nEND\n"  # END absorbs destxt's final '.'
    result = subprocess.run(["bash", "-c", steps], input=text, capture_output=True, text=True, check=True)
    lines = parse_apertium_stream(result.stdout)[: len(sentences)]
    if len(lines) != len(sentences):
        raise Veco2Error(f"Apertium {mode}: {len(lines)} output lines for {len(sentences)} sentences")
    out = []
    for tokens in lines:
        tagged = [(surface, token_upos(surface, analyses)) for surface, analyses in tokens]
        out.append(tagged if tagged and all(tag for _, tag in tagged) else None)
    return out


def build_udpos(pools: Pools, out: Path, rng: random.Random, counts: dict, apertium_dir: Path) -> None:
    def make(lang, sentences, n):
        if lang not in APERTIUM:
            return []
        candidates = _shuffled(sentences, rng)
        if lang != "en":  # strict coverage keeps 5-60 % of sentences: fall back on train-side ones
            candidates += _shuffled([s for s in pools.get(lang, ["train"]) if s not in set(sentences)], rng)
        candidates = candidates[: 40 * n]
        tagged = [t for t in apertium_tag(lang, candidates, apertium_dir) if t]
        counts.setdefault("udpos_kept_fraction", {})[lang] = round(len(tagged) / max(1, len(candidates)), 3)
        return ["\n".join(f"{w}\t{t}" for w, t in sent) + "\n" for sent in tagged[:n]]

    langs = [lang for lang in XTREME_LANGS["udpos"] if lang in APERTIUM]
    _write_split_files(out / "udpos", "udpos", pools, make, counts, langs, rng, blank_separated=True)


def entity_names(lang: str, seed: int) -> dict[str, list[str]]:
    """Real-name lists per type for ``lang``: Faker PER/ORG, CLDR (babel) LOC."""
    try:
        from babel import Locale
        from faker import Faker
    except ImportError as err:
        raise Veco2Error(f"PAN-X demo needs 'babel' and 'faker' (pip install babel faker): {err}") from None
    locale = Locale.parse(lang)
    loc = {name for code, name in locale.territories.items() if not code.isdigit()}
    loc |= {tz["city"] for tz in locale.time_zones.values() if "city" in tz}
    fake = Faker(FAKER_LOCALES[lang])
    fake.seed_instance(seed)
    sep = "" if lang in ("zh", "ja", "ko") else " "  # 김민준, 山田太郎: family name first, no space
    per = {fake.last_name() + sep + fake.first_name() if lang in ("zh", "ja", "ko") else
           fake.first_name() + sep + fake.last_name() for _ in range(600)}
    latin = all(c.isascii() or not c.isalpha() or "LATIN" in unicodedata.name(c, "") for c in "".join(per))
    org = {fake.company() for _ in range(600)}
    if lang not in UNSPACED:  # a bare surname ("Ackermann") is a Faker company format but reads as PER
        org = {o for o in org if len(o.split()) >= 2}
    names = {"PER": per, "ORG": org, "LOC": loc}
    if not latin:  # untranslated CLDR entries and Faker's English 'and' do not belong in this script
        names = {k: {v for v in vs if not re.search(r"[A-Za-z]", v)} for k, vs in names.items()}
    return {k: sorted(vs) for k, vs in names.items()}


def ner_tokens(lang: str, text: str) -> list[str]:
    return [c for c in text if not c.isspace()] if lang in UNSPACED else TOKEN_RE.findall(text)


def build_panx(pools: Pools, out: Path, rng: random.Random, counts: dict, seed: int) -> None:
    def make(lang, sentences, n, split):
        if lang not in FAKER_LOCALES:
            return []
        names = entity_names(lang, seed)
        if lang == "en":  # English train and English dev/test never share a name
            want = "train" if split == "train" else "eval"
            names = {k: [v for v in vs if (_hash01(v, seed) < 0.7) == (want == "train")] for k, vs in names.items()}
        units = pools.units[lang]
        rows = []
        for s in _shuffled(sentences, rng):
            if len(rows) == n:
                break
            spans = units.spans(s)
            if not spans:
                continue
            chosen = sorted(rng.sample(spans, min(len(spans), rng.choice([1, 2]))), reverse=True)
            pieces, end = [], len(s)
            for a, b in chosen:  # right to left, so offsets stay valid
                etype = rng.choice(["PER", "ORG", "LOC"])
                pieces.append([(t, "O") for t in ner_tokens(lang, s[b:end])])
                ent = ner_tokens(lang, rng.choice(names[etype]))
                pieces.append([(t, ("B-" if k == 0 else "I-") + etype) for k, t in enumerate(ent)])
                end = a
            pieces.append([(t, "O") for t in ner_tokens(lang, s[:end])])
            tokens = [tok for piece in reversed(pieces) for tok in piece]
            rows.append("\n".join(f"{w}\t{t}" for w, t in tokens) + "\n")
        return rows

    _write_split_files(out / "panx", "panx", pools, make, counts, XTREME_LANGS["panx"], rng,
                       blank_separated=True, pass_split=True)


def _write_split_files(folder: Path, task: str, pools: Pools, make, counts: dict, langs: list[str],
                       rng: random.Random, blank_separated: bool = False, pass_split: bool = False) -> None:
    """English train/dev from the train/dev sides; a test file per available language."""
    def call(lang, sentences, n, split):
        return make(lang, sentences, n, split) if pass_split else make(lang, sentences, n)

    jobs = [("train-en", "en", pools.get("en", ["train"]), SIZES["train"], "train"),
            ("dev-en", "en", pools.get("en", ["dev"]), SIZES["dev"], "dev")]
    jobs += [(f"test-{lang}", lang, pools.eval_pool(lang), SIZES["test"], "test")
             for lang in langs if lang in pools.by_side]
    for name, lang, sentences, n, split in jobs:
        rows = call(lang, sentences, n, split)
        if split == "test" and len(rows) < MIN_TEST:
            if rows:
                counts.setdefault("skipped", {}).setdefault(task, {})[lang] = f"only {len(rows)} examples"
            continue
        joiner = "\n" if blank_separated else ""
        write_text(folder / f"{name}.tsv", joiner.join(r if blank_separated else r + "\n" for r in rows))
        counts.setdefault(task, {})[name] = len(rows)


# ----------------------------------------------------------------------------------------------
# QA: cloze questions over real paragraphs, in SQuAD v1.1 JSON
# ----------------------------------------------------------------------------------------------

def cloze_dataset(lang: str, sentences: list[str], units: ContentUnits, n_questions: int,
                  rng: random.Random, id_prefix: str, per_context: int = 3, context_size: int = 3) -> dict:
    """SQuAD v1.1 JSON of cloze questions; every answer occurs exactly once in its context."""
    joiner = "" if lang in UNSPACED else " "
    pool = _shuffled(sentences, rng)
    articles, n, k = [], 0, 0
    while n < n_questions and k + context_size <= len(pool):
        group, k = pool[k: k + context_size], k + context_size
        context = joiner.join(group)
        offsets, pos = [], 0
        for s in group:
            offsets.append(pos)
            pos += len(s) + len(joiner)
        qas = []
        for idx in rng.sample(range(context_size), context_size):
            if len(qas) == per_context or n == n_questions:
                break
            s = group[idx]
            spans = [(a, b) for a, b in units.spans(s) if context.count(s[a:b]) == 1]
            if not spans:
                continue
            a, b = rng.choice(spans)
            answer = s[a:b]
            qas.append({"id": f"{id_prefix}-{n:05d}", "question": s[:a] + BLANK + s[b:],
                        "answers": [{"text": answer, "answer_start": offsets[idx] + a}]})
            n += 1
        if qas:
            articles.append({"context": context, "qas": qas})
    return {"version": "1.1", "data": [{"title": f"demo-{lang}-{i:04d}", "paragraphs": [p]}
                                       for i, p in enumerate(articles)]}


QA_TASKS = ("squad", "xquad", "mlqa", "tydiqa")
QA_TEST_FILES = {"xquad": "xquad/xquad.{}.json", "mlqa": "mlqa/test-context-{0}-question-{0}.json",
                 "tydiqa": "tydiqa/dev-goldp-{}.json"}


def build_qa(pools: Pools, out: Path, counts: dict, seed: int, tasks: Sequence[str] = QA_TASKS) -> dict[str, list[str]]:
    """Write the requested QA tasks (XQuAD/MLQA also get the SQuAD train/dev they train on);
    return each one's test languages.  Every file has its own seeded stream, so building a subset
    of the QA tasks writes the same files as building all of them."""
    units = pools.units
    en_train = pools.get("en", ["train"])
    half = len(en_train) // 2  # SQuAD and TyDiQA English training data use disjoint sentences
    squad_train = _shuffled(en_train, random.Random(f"{seed}:qa-train-halves"))
    datasets = {}
    if {"squad", "xquad", "mlqa"} & set(tasks):
        datasets["squad/train-v1.1.json"] = ("en", squad_train[:half], SIZES["qa_train"], "squad-train")
        datasets["squad/dev-v1.1.json"] = ("en", pools.get("en", ["dev"]), SIZES["qa_dev"], "squad-dev")
    if "tydiqa" in tasks:
        datasets["tydiqa/tydiqa-goldp-v1.1-train.json"] = ("en", squad_train[half:], SIZES["tydiqa_train"], "english")
    languages = {}
    for task, pattern in QA_TEST_FILES.items():
        if task not in tasks:
            continue
        languages[task] = _qa_langs(task, pools, counts)  # raises before anything is written
        for lang in languages[task]:
            prefix = "english" if (task == "tydiqa" and lang == "en") else f"{task}-{lang}"
            datasets[pattern.format(lang)] = (lang, pools.eval_pool(lang), SIZES["qa_test"], prefix)
    for rel, (lang, sentences, n, prefix) in datasets.items():
        data = cloze_dataset(lang, sentences, units[lang], n, random.Random(f"{seed}:{rel}"), prefix)
        write_text(out / rel, json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
        counts.setdefault(rel.split("/")[0], {})[Path(rel).name] = sum(
            len(p["qas"]) for a in data["data"] for p in a["paragraphs"])
    return languages


def _qa_langs(task: str, pools: Pools, counts: dict) -> list[str]:
    """The task's official languages whose eval pool has ``QA_MIN_POOL`` sentences, English first.

    Never padded with other corpus languages: too few is a :class:`Veco2Error` (see ``MIN_LANGS``).
    """
    langs = []
    for lang in XTREME_LANGS[task]:
        size = len(pools.eval_pool(lang)) if lang in pools.by_side else None
        if size is None:
            continue
        if size < QA_MIN_POOL:
            counts.setdefault("skipped", {}).setdefault(task, {})[lang] = f"only {size} eval sentences"
            continue
        langs.append(lang)
    _require_languages(task, langs, counts)
    return sorted(langs, key=lambda lang: lang != "en")


def _require_languages(task: str, langs: Iterable[str], counts: dict) -> None:
    """Fail unless ``task`` has ``MIN_LANGS`` non-English test languages (all official by construction)."""
    others = sorted(set(langs) - {"en"})
    if len(others) < MIN_LANGS:
        skipped = counts.get("skipped", {}).get(task)
        raise Veco2Error(
            f"demo {task}: only {len(others)} non-English test language(s) ({' '.join(others) or 'none'}) among "
            f"its official XTREME languages ({' '.join(XTREME_LANGS[task])}), need {MIN_LANGS}"
            + (f"; skipped for size: {skipped}" if skipped else "")
            + "; add official languages of the task to the demo corpus (veco2/demo/corpus.py), "
            "never other languages")


# ----------------------------------------------------------------------------------------------
# Helpers, manifest, README, entry points
# ----------------------------------------------------------------------------------------------

def _shuffled(items: Iterable, rng: random.Random) -> list:
    items = list(items)
    rng.shuffle(items)
    return items


def _balanced_labels(labels: list, n: int, rng: random.Random) -> list:
    out = [labels[i % len(labels)] for i in range(n)]
    rng.shuffle(out)
    return out


def write_lines(path: str | Path, lines: list[str]) -> None:
    write_text(path, "".join(line + "\n" for line in lines))


def package_version(root: Path, package: str) -> str | None:
    """Debian version from ``root/../doc/PACKAGE/changelog.Debian.gz`` (first line), if present."""
    for doc in (root.parent / "doc" / package, Path("/usr/share/doc") / package):
        changelog = doc / "changelog.Debian.gz"
        if changelog.exists():
            with gzip.open(changelog, "rt", encoding="utf-8") as handle:
                match = re.match(r"\S+ \(([^)]+)\)", handle.readline())
                return match.group(1) if match else None
    return None


def build_demo_tasks(corpus_dir: str | Path, out_dir: str | Path, seed: int = 0,
                     apertium_dir: str | Path = "/usr/share/apertium",
                     tasks: Sequence[str] = TASKS) -> dict:
    """Build the XTREME demo task files under ``out_dir``; returns the manifest (also written).

    Deterministic for a given corpus, ``seed`` and source versions (Apertium, babel/CLDR, Faker).
    """
    corpus_dir, out_dir, apertium_dir = Path(corpus_dir), Path(out_dir), Path(apertium_dir)
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise Veco2Error(f"unknown demo task(s) {', '.join(unknown)} (choose from {', '.join(TASKS)})")
    corpus = load_corpus(corpus_dir)
    pools = Pools(corpus, seed)
    counts: dict = {}
    languages: dict[str, list[str]] = {}
    # Build into a staging folder, then replace each built task's folder whole: files of a language
    # no longer built cannot linger, and a failed build leaves the previous data untouched.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for task in tasks:
            rng = random.Random(f"{seed}:{task}")  # per-task stream: one task's change leaves others intact
            if task == "tatoeba":
                build_tatoeba(corpus, staging, rng, counts)
            elif task == "bucc2018":
                build_bucc(corpus, staging, rng, counts)
            elif task == "pawsx":
                build_pawsx(pools, staging, rng, counts)
            elif task == "xnli":
                build_xnli(pools, staging, rng, counts)
            elif task == "udpos":
                build_udpos(pools, staging, rng, counts, apertium_dir)
            elif task == "panx":
                build_panx(pools, staging, rng, counts, seed)
            if task in ("tatoeba", "bucc2018"):
                languages[task] = sorted(counts.get(task, {}))
            elif task not in QA_TASKS:
                languages[task] = sorted(name[5:] for name in counts.get(task, {}) if name.startswith("test-"))
            if task in languages:
                _require_languages(task, languages[task], counts)
        qa_tasks = [task for task in QA_TASKS if task in tasks]
        if qa_tasks:
            languages.update(build_qa(pools, staging, counts, seed, qa_tasks))
        out_dir.mkdir(parents=True, exist_ok=True)
        for folder in sorted({*tasks, *(p.name for p in staging.iterdir())}):
            if (out_dir / folder).exists():
                shutil.rmtree(out_dir / folder)
            if (staging / folder).exists():
                (staging / folder).replace(out_dir / folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest = _manifest(corpus_dir, out_dir, seed, apertium_dir, counts, pools, languages)
    manifest = _keep_unbuilt(manifest, out_dir / "manifest.json", tasks)
    write_json(out_dir / "manifest.json", manifest)
    write_text(out_dir / "README.md", _readme(manifest))
    return manifest


def _manifest(corpus_dir: Path, out_dir: Path, seed: int, apertium_dir: Path, counts: dict, pools: Pools,
              languages: dict[str, list[str]]) -> dict:
    import importlib.metadata as md

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    corpus_manifest = corpus_dir / "manifest.json"
    corpus_info = json.loads(corpus_manifest.read_text(encoding="utf-8")) if corpus_manifest.exists() else {}
    sentence_packages = sorted({f"{src['package']}={src['version']}"
                                for srcs in corpus_info.get("sentence_sources", {}).values() for src in srcs
                                if isinstance(src, dict) and "package" in src})
    sources = {
        "corpus": {"path": str(corpus_dir.name), "manifest_sha256":
                   sha256_file(corpus_manifest) if corpus_manifest.exists() else None,
                   "sentence_packages": sentence_packages},
        "apertium": {pkg: package_version(apertium_dir, pkg) for pkg in sorted({p for p, _, _ in APERTIUM.values()})},
        "babel (CLDR names)": version("babel"),
        "faker (person / company names)": version("faker"),
    }
    files = {str(p.relative_to(out_dir)): sha256_file(p) for p in sorted(out_dir.rglob("*"))
             if p.is_file() and p.name not in ("manifest.json", "README.md")}
    return {"demo_data": True,
            "warning": "DEMO data: scores are NOT comparable with published XTREME numbers.",
            "seed": seed, "sources": sources, "languages": pools.langs, "test_languages": languages,
            "counts": counts, "files": files}


#: The tasks whose build reads a source of the manifest: a rebuild without them keeps its recorded version.
SOURCE_TASKS = {"apertium": {"udpos"}, "babel (CLDR names)": {"panx"}, "faker (person / company names)": {"panx"}}
#: Count entries that belong to a task without being named after it.
TASK_COUNTS = {"udpos_kept_fraction": "udpos"}


def _keep_unbuilt(manifest: dict, previous_path: Path, tasks: Sequence[str]) -> dict:
    """A rebuild of some tasks (``--tasks``) keeps what the previous manifest says of the others:
    their test languages, counts and skipped languages, and the versions of sources only they read."""
    if set(tasks) >= set(TASKS) or not previous_path.exists():
        return manifest
    previous = json.loads(previous_path.read_text(encoding="utf-8"))
    built = set(tasks)
    for task, langs in previous.get("test_languages", {}).items():
        if task not in built:
            manifest["test_languages"][task] = langs
    counts = manifest["counts"]
    for name, value in previous.get("counts", {}).items():
        if name == "skipped":
            for task, skipped in value.items():
                if task not in built:
                    counts.setdefault("skipped", {})[task] = skipped
        elif TASK_COUNTS.get(name, name) not in built:
            counts[name] = value
    for name, value in previous.get("sources", {}).items():
        if not SOURCE_TASKS.get(name, set()) & built:
            manifest["sources"][name] = value
    manifest["test_languages"] = {t: manifest["test_languages"][t] for t in TASKS if t in manifest["test_languages"]}
    manifest["counts"] = {name: counts[name] for name in dict.fromkeys([*previous.get("counts", {}), *counts])
                          if name in counts}  # the previous order: a rebuild's diff shows only what changed
    return manifest


#: The procedures' reference, copied into the data folder's README so that the data card is complete.
PROCEDURES_DOC = Path(__file__).resolve().parents[2] / "docs" / "demo.md"


def _procedures() -> str:
    """docs/demo.md's section on these tasks (its sub-sections one level up); the module docstring
    where the repository's docs are not at hand (an installed wheel)."""
    if PROCEDURES_DOC.exists():
        text = PROCEDURES_DOC.read_text(encoding="utf-8")
        section = text.split("\n## The demo XTREME tasks\n", 1)[-1].split("\n## ", 1)[0]
        return re.sub(r"^### ", "## ", section.split("\n\n", 1)[1].strip(), flags=re.M)
    return __doc__.split("\n\n", 1)[1].strip()


def _readme(manifest: dict) -> str:
    lines = ["# XTREME demo task data", "", DEMO_NOTE, "", _procedures(), "", "## Sources", ""]
    lines += [f"- {name}: `{json.dumps(value, ensure_ascii=False)}`" for name, value in manifest["sources"].items()]
    lines += ["", "## Test languages (each an official XTREME language of its task)", ""]
    lines += [f"- {task}: {' '.join(langs)}" for task, langs in manifest["test_languages"].items()]
    lines += ["", "## Counts (examples / sentences / pairs)", ""]
    lines += [f"- {task}: `{json.dumps(value, ensure_ascii=False, sort_keys=True)}`"
              for task, value in sorted(manifest["counts"].items())]
    lines += ["", "Rebuild: `veco2 data build-demo-tasks` (see `veco2/demo/tasks.py`); file hashes are "
              "in `manifest.json`.  Needs `pip install babel faker` and (Debian) `apt-get install apertium cg3 "
              + " ".join(sorted({p for p, _, _ in APERTIUM.values()})) + "` (or `--apertium-dir` pointing at "
              "the unpacked `usr/share/apertium` of those packages).", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    package_dir = Path(__file__).resolve().parents[1] / "demo_data"
    parser = argparse.ArgumentParser(prog="veco2 data build-demo-tasks", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus-dir", default=str(package_dir))
    parser.add_argument("--out-dir", default=str(package_dir / "xtreme"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--apertium-dir", default="/usr/share/apertium")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    args = parser.parse_args(argv)
    manifest = build_demo_tasks(args.corpus_dir, args.out_dir, args.seed, args.apertium_dir, args.tasks)
    print(json.dumps(manifest["counts"], ensure_ascii=False, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The committed demo corpus, and the cleaning/splitting functions that built it."""

import gzip
import re

import pytest

from veco2.demo import corpus as db
from veco2.demo.corpus import (
    BuildOptions, LanguageHarvest, SOURCES, clean_message, dedup_key, dictd_translations, has_placeholder,
    keep_sentence_pair, script_fraction, split_pairs, strip_accelerators,
)
from veco2.fileio import read_json

DATA = db.demo_data_dir()
MANIFEST = read_json(DATA / "manifest.json")
LANGS = [lang for lang in MANIFEST["languages"] if lang != "en"]


def lines(path):
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


def pairs(lang, split):
    return [tuple(line.split("\t")) for line in lines(DATA / "parallel" / split / f"en-{lang}.tsv.gz")]


# --- the committed corpus -----------------------------------------------------------------------


def test_languages_and_api():
    assert db.demo_languages()[0] == "en"
    assert {"de", "fr", "es", "ru", "zh", "ar", "hi", "sw", "fi", "id", "ko"} <= set(LANGS)
    assert len(db.demo_parallel("de", "test")) == MANIFEST["counts"]["de"]["parallel"]["test"]
    assert db.demo_dictionary("fr")[:1] == [tuple(lines(DATA / "dict" / "en-fr.tsv.gz")[0].split("\t"))]
    assert len(db.demo_monolingual("en")) == MANIFEST["counts"]["en"]["mono_lines"]
    with pytest.raises(db.Veco2Error, match="no demo data for language 'xx'"):
        db.demo_parallel("xx", "train")


def test_manifest_counts_equal_file_line_counts():
    for lang in LANGS:
        counts = MANIFEST["counts"][lang]
        for split in ("train", "dev", "test"):
            assert len(pairs(lang, split)) == counts["parallel"][split], (lang, split)
        assert len(lines(DATA / "mono" / f"{lang}.txt.gz")) == counts["mono_lines"], lang
        assert len(lines(DATA / "dict" / f"en-{lang}.tsv.gz")) == counts["dict_entries"], lang
    assert len(lines(DATA / "mono" / "en.txt.gz")) == MANIFEST["counts"]["en"]["mono_lines"]


def test_size_targets_met():
    for lang in LANGS:
        counts = MANIFEST["counts"][lang]
        assert counts["dict_entries"] >= 1000, lang
        if lang != "sw":  # Swahili: no LibreOffice translation, only ~100 sentence pairs exist (DATA_CARD)
            assert sum(counts["parallel"].values()) >= 2000, lang
            assert counts["parallel"]["dev"] == counts["parallel"]["test"] == 500, lang
        assert counts["parallel"]["test"] > 0 and counts["parallel"]["train"] > 0, lang


def test_every_line_is_two_nonempty_columns():
    for lang in LANGS:
        for split in ("train", "dev", "test"):
            assert all(len(p) == 2 and p[0] and p[1] for p in pairs(lang, split)), (lang, split)
        assert all(len(l.split("\t")) == 2 for l in lines(DATA / "dict" / f"en-{lang}.tsv.gz")), lang


def test_splits_disjoint_and_mono_is_training_side_only():
    held_out_en = set()
    for lang in LANGS:
        by_split = {s: pairs(lang, s) for s in ("train", "dev", "test")}
        en = {s: {dedup_key(e) for e, _ in p} for s, p in by_split.items()}
        tgt = {s: {dedup_key(x) for _, x in p} for s, p in by_split.items()}
        for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
            assert not en[a] & en[b], (lang, a, b)
            assert not tgt[a] & tgt[b], (lang, a, b)
        held_out_en |= en["dev"] | en["test"]
        mono = {dedup_key(s) for s in lines(DATA / "mono" / f"{lang}.txt.gz")}
        assert not mono & (tgt["dev"] | tgt["test"]), lang
    # across languages too: an English dev/test sentence of one pair is never training text of another
    for lang in LANGS:
        assert not {dedup_key(e) for e, _ in pairs(lang, "train")} & held_out_en, lang
    assert not {dedup_key(s) for s in lines(DATA / "mono" / "en.txt.gz")} & held_out_en


SCRIPT_RANGES = {"zh": "\u4e00-\u9fff", "ru": "\u0400-\u04ff", "ar": "\u0600-\u06ff", "hi": "\u0900-\u097f",
                 "el": "\u0370-\u03ff\u1f00-\u1fff", "ja": "\u3040-\u30ff\u4e00-\u9fff",
                 "ko": "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f\u4e00-\u9fff"}  # Hangul, Hanja


@pytest.mark.parametrize("lang", sorted(SCRIPT_RANGES))
def test_target_side_in_the_right_script(lang):
    if lang not in LANGS:
        pytest.skip(f"{lang} not built")
    in_script = re.compile(f"[{SCRIPT_RANGES[lang]}]")
    letters = re.compile(r"[^\W\d_]")
    for x in [x for _, x in pairs(lang, "test")] + [x for _, x in lines_dict(lang)]:
        n_letters = len(letters.findall(x))
        assert len(in_script.findall(x)) >= 0.5 * n_letters, (lang, x)


def lines_dict(lang):
    return [tuple(l.split("\t")) for l in lines(DATA / "dict" / f"en-{lang}.tsv.gz")]


def test_no_placeholders_or_accelerators_left():
    pattern = re.compile(r"%[sd]|%\d|\$\(ARG|\{0\}|<[a-z]+>|~[A-Z]|\t")
    for lang in LANGS:
        for split in ("train", "test"):
            for en, x in pairs(lang, split):
                assert not pattern.search(en) and not pattern.search(x), (lang, en, x)


def test_total_size_and_data_card():
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total < 25 * 1024 * 1024
    card = (DATA / "DATA_CARD.md").read_text(encoding="utf-8")
    assert "DEMO data" in card and "never be compared" in card
    for source in MANIFEST["sentence_sources"]["de"] + MANIFEST["dictionary_sources"]["de"]:
        assert re.fullmatch(r"[0-9a-f]{64}", source["sha256"]) and source["version"]


# --- cleaning and splitting on hand-written examples ---------------------------------------------


@pytest.mark.parametrize("raw, clean", [
    ("~Save As...", "Save As..."),
    ("Save &As", "Save As"),
    ("Fish & Chips", "Fish & Chips"),
    ("Field content is not NU_LL", "Field content is not NULL"),
    ("削除(_D)", "削除"),
    ("保存（~S）", "保存"),
    ("Save %PRODUCTNAME\tfile\n now", "Save LibreOffice file now"),
])
def test_clean_message(raw, clean):
    assert clean_message(raw) == clean


@pytest.mark.parametrize("text, expected", [
    ("Cannot open %s for reading", True), ("Deleted %1 rows", True), ("Value $(ARG1) invalid", True),
    ("Page {0} of {1}", True), ("Use <b>bold</b> text", True), ("Printed 5.2%% done", True),
    ("See https://example.org", True), ("Shows the selected row in the table.", False),
    ("Increase by 10 percent", False),
])
def test_has_placeholder(text, expected):
    assert has_placeholder(text) is expected


def test_strip_accelerators_keeps_double_ampersand_context():
    assert strip_accelerators("A && B") == "A && B"


def test_script_fraction():
    assert script_fraction("Привет мир", ("CYRILLIC",)) == 1.0
    assert script_fraction("XML 筛选器列表", ("CJK",)) == pytest.approx(5 / 8)  # 5 Han of 8 letters
    assert script_fraction("123 !", ("LATIN",)) == 0.0


def test_keep_sentence_pair_reasons():
    de, zh, opts = SOURCES["de"], SOURCES["zh"], BuildOptions()
    assert keep_sentence_pair("Deletes the selected row.", "Löscht die ausgewählte Zeile.", de, opts) is None
    assert keep_sentence_pair("Delete", "Löschen", de, opts) == "too short"
    assert keep_sentence_pair("Deletes the selected row.", "Deletes the selected row", de, opts) == "untranslated"
    assert keep_sentence_pair("Deletes the selected row.", "Deletes the row 选中", zh, opts) == "target script"
    assert keep_sentence_pair("Deletes %1 selected rows.", "Löscht %1 Zeilen.", de, opts) == "placeholder"


def test_dictd_translations():
    assert dictd_translations("how /hau/\n1. comment, de quelle manière\n2. comme\n") == \
        ["comment", "de quelle manière", "comme"]
    # Wiktionary-derived entries: translation line, then an English gloss line that is not taken
    assert dictd_translations("sun //sʌn// <pn>\nслъ́нце, слънце\nthe star around which the Earth revolves\n") == \
        ["слънце"]
    assert dictd_translations("survive /səvˈaɪv/\n\nεπιζώ\n") == ["επιζώ"]
    assert dictd_translations("name /n/ <N>\n1. नाम~बताना\n      \"example\"\n") == ["नाम बताना"]
    assert dictd_translations("cork /k/\nKorken <masc> [tech.]\n see: {corks}\n") == ["Korken"]
    # affixes and compound stems are not words (eng-fin, eng-deu)
    assert dictd_translations("the /ðə/ <article>\n1. se 2.\n2. -mme, -ni, en/-än\n3. sitä\n") == ["se 2", "sitä"]
    assert dictd_translations("air /eə/\nLuft-, Luft\n") == ["Luft"]


def test_split_pairs_global_disjoint_and_sized():
    def harvest(keys, lang):
        h = LanguageHarvest()
        h.pairs = {k: (f"English {k}", f"{lang} {k}") for k in keys}
        return h

    harvests = {"aa": harvest(range(100), "aa"), "bb": harvest(range(50, 90), "bb")}
    opts = BuildOptions(dev_size=10, test_size=10, max_train_pairs=1000)
    splits = split_pairs(harvests, opts)
    for lang, n in (("aa", 100), ("bb", 40)):
        assert sum(len(v) for v in splits[lang].values()) == n
        assert len(splits[lang]["test"]) == 10 and len(splits[lang]["dev"]) == 10
    # keys shared by both languages are preferred for held-out sets: bb's test == aa's test
    assert {e for e, _ in splits["aa"]["test"]} == {e for e, _ in splits["bb"]["test"]}
    en_by_split = {s: {e for lang in splits for e, _ in splits[lang][s]} for s in ("train", "dev", "test")}
    assert not en_by_split["train"] & en_by_split["test"] and not en_by_split["dev"] & en_by_split["test"]
    assert not en_by_split["train"] & en_by_split["dev"]
    assert split_pairs(harvests, opts) == splits  # seeded: deterministic

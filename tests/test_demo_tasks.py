"""Tests for the XTREME demo task data: the shipped files (formats, languages, labels, leakage,
hashes) and the builder's procedures on hand-made inputs."""

from __future__ import annotations

import collections
import gzip
import json
import random
import re
from pathlib import Path

import pytest

from veco2.demo import tasks as dt
from veco2.provenance import sha256_file

DEMO = Path(__file__).resolve().parents[1] / "veco2" / "demo_data"
XT = DEMO / "xtreme"
UPOS = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
        "PUNCT", "SCONJ", "SYM", "VERB", "X"}
NER = {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"}


def corpus_pairs(split: str) -> dict[str, set[tuple[str, str]]]:
    out = {}
    for path in sorted((DEMO / "parallel" / split).glob("en-*.tsv.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            out[path.name[3:-7]] = {tuple(line.rstrip("\n").split("\t")) for line in handle if line.strip()}
    return out


def read_tsv(path: Path, n_fields: int) -> list[list[str]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(len(r) == n_fields for r in rows), path
    return rows


def read_conll(path: Path) -> list[list[tuple[str, str]]]:
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line:
            if current:
                sentences.append(current)
            current = []
            continue
        word, tag = line.split("\t")
        assert word and not word.isspace()
        current.append((word, tag))
    assert not current, f"{path}: file must end with a newline"
    return sentences


def squad_qas(path: Path) -> list[tuple[str, dict]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == "1.1"
    return [(p["context"], qa) for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]]


def test_languages(task: str, pattern: str) -> list[str]:
    return sorted(p.name for p in (XT / task).glob(pattern))


test_languages.__test__ = False  # helper, not a test


# ----------------------------------------------------------------------------------------------
# The shipped files
# ----------------------------------------------------------------------------------------------

def test_manifest_hashes_match_and_marked_demo():
    manifest = json.loads((XT / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["demo_data"] is True and "NOT comparable" in manifest["warning"]
    on_disk = {str(p.relative_to(XT)) for p in XT.rglob("*") if p.is_file()} - {"manifest.json", "README.md"}
    assert set(manifest["files"]) == on_disk
    for rel, digest in manifest["files"].items():
        assert sha256_file(XT / rel) == digest, rel
    assert "**DEMO DATA" in (XT / "README.md").read_text(encoding="utf-8")
    # small enough to ship; 4.0 MB before fi/id/ko (TyDiQA's official languages) joined the corpus
    assert sum((XT / rel).stat().st_size for rel in on_disk) <= 4_500_000


@pytest.mark.parametrize("task", ["xnli", "pawsx", "udpos", "panx"])
def test_classification_and_tagging_files_parse_with_four_plus_languages(task):
    tests = test_languages(task, "test-*.tsv")
    assert len([t for t in tests if t != "test-en.tsv"]) >= 4, tests
    assert (XT / task / "train-en.tsv").exists() and (XT / task / "dev-en.tsv").exists()
    for path in sorted((XT / task).glob("*.tsv")):
        if task == "xnli":
            labels = collections.Counter(r[2] for r in read_tsv(path, 3))
            assert set(labels) == {"entailment", "neutral", "contradiction"}
            assert min(labels.values()) >= 0.25 * sum(labels.values()), (path, labels)
        elif task == "pawsx":
            rows = read_tsv(path, 3)
            labels = collections.Counter(r[2] for r in rows)
            assert set(labels) == {"0", "1"} and min(labels.values()) >= 0.4 * len(rows), (path, labels)
            # a positive repeats the sentence, a negative changes it: modulo the final stop
            for s1, s2, label in rows:
                core = lambda s: s.rstrip(".。।۔").rstrip()  # noqa: E731
                assert (core(s1) == core(s2)) == (label == "1"), (path, s1, s2, label)
        elif task == "udpos":
            sentences = read_conll(path)
            tags = collections.Counter(t for s in sentences for _, t in s)
            assert set(tags) <= UPOS and len(tags) >= 8, (path, tags)
            assert len(sentences) >= dt.MIN_TEST
        else:
            sentences = read_conll(path)
            tags = {t for s in sentences for _, t in s}
            assert tags <= NER and {"B-PER", "B-ORG", "B-LOC", "O"} <= tags, (path, tags)
            for sentence in sentences:  # IOB2: an I- tag continues an entity of the same type
                previous = "O"
                for _, tag in sentence:
                    assert not tag.startswith("I-") or previous[2:] == tag[2:], path
                    previous = tag


@pytest.mark.parametrize("pattern", ["squad/*.json", "xquad/*.json", "mlqa/*.json", "tydiqa/*.json"])
def test_qa_files_are_squad_with_exact_answer_spans(pattern):
    files = sorted(XT.glob(pattern))
    if not pattern.startswith("squad"):
        assert len([f for f in files if "-en" not in f.name and ".en." not in f.name
                    and "train" not in f.name]) >= 4, files
    for path in files:
        qas = squad_qas(path)
        assert len(qas) >= dt.MIN_TEST, path
        ids = [qa["id"] for _, qa in qas]
        assert len(set(ids)) == len(ids)
        if path.name == "tydiqa-goldp-v1.1-train.json" or path.name == "dev-goldp-en.json":
            assert all(i.startswith("english-") for i in ids)
        for context, qa in qas:
            (answer,) = qa["answers"]
            start = answer["answer_start"]
            assert context[start: start + len(answer["text"])] == answer["text"], (path, qa["id"])
            assert context.count(answer["text"]) == 1 and dt.BLANK in qa["question"]


# file name -> (language or LANG3 code) of every file the demo may hold, per task folder
DEMO_FILES = {
    "xnli": r"test-(\w+)\.tsv|(?:train|dev)-en\.tsv", "pawsx": r"test-(\w+)\.tsv|(?:train|dev)-en\.tsv",
    "udpos": r"test-(\w+)\.tsv|(?:train|dev)-en\.tsv", "panx": r"test-(\w+)\.tsv|(?:train|dev)-en\.tsv",
    "xquad": r"xquad\.(\w+)\.json", "mlqa": r"test-context-(\w+)-question-\1\.json",
    "tydiqa": r"dev-goldp-(\w+)\.json|tydiqa-goldp-v1\.1-train\.json",
    "bucc2018": r"(\w+)-en\.(?:dev|test)\.(?:\w+)", "tatoeba": r"tatoeba\.(\w+)-eng\.\w+",
}


@pytest.mark.parametrize("task", sorted(DEMO_FILES))
def test_demo_languages_are_official_and_at_least_min_langs(task):
    from veco2.xtreme.data import available_languages
    from veco2.xtreme.registry import get_task

    spec = get_task(task)
    uses_code = "{code}" in spec.local["files"]["test"]  # Tatoeba's files are named by LANG3 code
    from_code = {spec.code(lang) if uses_code else lang: lang for lang in spec.languages}
    found = set()
    for path in (XT / task).iterdir():
        match = re.fullmatch(DEMO_FILES[task], path.name)
        assert match, f"{path}: not a file the demo builder writes"
        if match.group(1):
            assert match.group(1) in from_code, f"{path}: {match.group(1)} is not an official {task} language"
            found.add(from_code[match.group(1)])
    assert len(found - {"en"}) >= dt.MIN_LANGS, (task, sorted(found))
    assert sorted(found) == sorted(available_languages(task, XT))  # the loaders see exactly these
    manifest = json.loads((XT / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(manifest["test_languages"][task]) == sorted(found)


def test_tatoeba_uses_only_test_split_pairs():
    test = corpus_pairs("test")
    languages = {p.name.split(".")[1][:3] for p in (XT / "tatoeba").glob("tatoeba.*")}
    assert len(languages) >= 4
    code_to_lang = {v: k for k, v in dt.LANG3.items()}
    for code in languages:
        lang = code_to_lang[code]
        xs = (XT / "tatoeba" / f"tatoeba.{code}-eng.{code}").read_text(encoding="utf-8").splitlines()
        ens = (XT / "tatoeba" / f"tatoeba.{code}-eng.eng").read_text(encoding="utf-8").splitlines()
        assert len(xs) == len(ens) >= dt.MIN_TEST
        assert set(zip(ens, xs)) <= test[lang], code
        assert len(set(xs)) == len(xs) and len(set(ens)) == len(ens)


def test_bucc_gold_ids_exist_and_pairs_come_from_test_split():
    test = corpus_pairs("test")
    langs = sorted({p.name.split("-")[0] for p in (XT / "bucc2018").glob("*.gold")})
    assert len(langs) >= 4 and {"de", "fr", "ru", "zh"} <= set(langs)
    for lang in langs:
        test_x = {x for _, x in test[lang]}
        test_en = {en for en, _ in test[lang]}
        splits = {}
        for split in ("dev", "test"):
            base = XT / "bucc2018" / f"{lang}-en.{split}"
            xs = dict(read_tsv(Path(f"{base}.{lang}"), 2))
            ens = dict(read_tsv(Path(f"{base}.en"), 2))
            gold = read_tsv(Path(f"{base}.gold"), 2)
            assert all(i.startswith(f"{lang}-") for i in xs) and all(i.startswith("en-") for i in ens)
            assert set(xs.values()) <= test_x and set(ens.values()) <= test_en
            assert gold and {(ens[e], xs[x]) for x, e in gold} <= test[lang]
            assert len(gold) < min(len(xs), len(ens))  # decoys on both sides
            splits[split] = set(xs.values())
        assert not splits["dev"] & splits["test"]


def test_no_test_split_sentence_outside_retrieval_and_english_train_disjoint_from_tests():
    test_sentences = {s for pairs in corpus_pairs("test").values() for pair in pairs for s in pair}
    english_train, evaluation = set(), set()
    for task in ("xnli", "pawsx"):
        for path in (XT / task).glob("*.tsv"):
            sentences = {r[0] for r in read_tsv(path, 3)}
            (english_train if path.name == "train-en.tsv" else evaluation).update(sentences)
    tokenised_train, tokenised_eval = set(), set()  # token-joined sentences: compared whole
    for task in ("udpos", "panx"):
        for path in (XT / task).glob("*.tsv"):
            words = {" ".join(w for w, _ in s) for s in read_conll(path)}
            (tokenised_train if path.name == "train-en.tsv" else tokenised_eval).update(words)
    assert not tokenised_train & tokenised_eval
    for path in XT.glob("*/*.json"):
        if path.name == "manifest.json":
            continue
        contexts = {c for c, _ in squad_qas(path)}
        (english_train if "train" in path.name else evaluation).update(contexts)
    assert not english_train & test_sentences
    assert not evaluation & test_sentences
    assert not english_train & evaluation
    # no sentence segment (messages reuse sentences) of English training data in any evaluation text
    def segs(text):
        return {g.strip().rstrip(".!?") for g in re.split(r"(?<=[.!?])\s+", text) if len(g.strip()) >= 8}

    train_segs = {g for text in english_train for g in segs(text)}
    eval_segs = {g for text in evaluation | test_sentences for g in segs(text)}
    assert not train_segs & eval_segs, sorted(train_segs & eval_segs)[:5]


def test_panx_english_train_and_test_names_are_disjoint():
    def entities(path):
        out = set()
        for sentence in read_conll(path):
            current = []
            for word, tag in sentence + [("", "O")]:
                if tag.startswith("B-") or tag == "O":
                    if current:
                        out.add(" ".join(current))
                    current = [word] if tag.startswith("B-") else []
                else:
                    current.append(word)
        return out

    train = entities(XT / "panx" / "train-en.tsv")
    assert len(train) > 100
    assert not train & entities(XT / "panx" / "test-en.tsv")


# ----------------------------------------------------------------------------------------------
# Builder procedures on hand-made inputs
# ----------------------------------------------------------------------------------------------

def test_paws_negative_replaces_every_content_unit_with_one_the_sentence_lacks():
    units = dt.ContentUnits("en", ["the cat", "the dog", "a cat"], n_stop=1)  # stop = {'the'}
    sentence = "the black cat sees a small dog"
    vocabulary = ["cat", "mouse", "bird"]  # "cat" is in the sentence: never a replacement
    for seed in range(10):
        first, second = dt.paws_pair(sentence, units, vocabulary, random.Random(seed), label=0)
        assert first == sentence
        words, original = second.rstrip(".").split(), sentence.split()
        assert len(words) == len(original)
        kept = [(a, b) for a, b in zip(original, words) if a == b]
        assert kept == [("the", "the"), ("a", "a")]  # the function words stay, every content unit goes
        assert set(words) - {"the", "a"} <= {"mouse", "bird"}
        positive = dt.paws_pair(sentence, units, vocabulary, random.Random(seed), label=1)
        assert positive[0] == sentence and positive[1].rstrip(".") == sentence
    assert dt.paws_pair("the a", units, vocabulary, random.Random(1), label=0) is None  # no content unit
    assert dt.paws_pair("the cat", units, ["cat"], random.Random(1), label=0) is None  # nothing to put in


def test_toggle_final_punct_and_nli_span():
    assert dt.toggle_final_punct("Open the file.") == "Open the file"
    assert dt.toggle_final_punct("Open the file") == "Open the file."
    assert dt.toggle_final_punct("打开文件") == "打开文件。"
    assert dt.nli_span("en", "If the file exists, it is replaced by the new one", random.Random(0)) == \
        "it is replaced by the new one"
    span = dt.nli_span("en", "one two three four five six seven eight nine ten", random.Random(0))
    assert span in ("one two three four five six seven", "four five six seven eight nine ten")


def test_parse_apertium_stream_and_upos_mapping():
    stream = ('^The/the<det><def><sp>$ ^file/file<n><sg>$ "^big/big<adj><sint>$"^./.<sent>$[\n]'
              '^del/de<pr>+el<det><def><m><sg>$ ^xyz/*xyz$[][\n]')
    lines = dt.parse_apertium_stream(stream)
    assert [[s for s, _ in line] for line in lines] == [["The", "file", '"', "big", '"', "."], ["del", "xyz"]]
    tags = [dt.token_upos(s, a) for s, a in lines[0]]
    assert tags == ["DET", "NOUN", "PUNCT", "ADJ", "PUNCT", "PUNCT"]
    assert [dt.token_upos(s, a) for s, a in lines[1]] == ["ADP", None]
    assert dt.token_upos("que", ["que<cnjsub>", "que<rel><an><mf><sp>"]) is None  # ambiguous: dropped
    assert dt.token_upos("disk", ["disk<n><sg><nom>", "disk<n><sg><acc>"]) == "NOUN"


def test_cloze_answers_occur_once_at_their_offset():
    sentences = ["Open the selected document now", "Close every window quickly", "Print the report twice",
                 "Save the document again", "Rename the selected folder"]
    units = dt.ContentUnits("en", sentences, n_stop=1)
    data = dt.cloze_dataset("en", sentences, units, 4, random.Random(0), "english")
    qas = [(p["context"], qa) for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert 1 <= len(qas) <= 4
    for context, qa in qas:
        text, start = qa["answers"][0]["text"], qa["answers"][0]["answer_start"]
        assert context[start:start + len(text)] == text and context.count(text) == 1
        assert qa["question"].replace(dt.BLANK, text) in context and qa["id"].startswith("english-")


def _tiny_corpus(root: Path, langs: tuple[str, ...] = ("de", "fr", "es", "ru", "zh", "ko")) -> None:
    """Official languages enough for BUCC (de fr ru zh), PAWS-X (de es fr ko), XNLI and Tatoeba."""
    rng = random.Random(0)
    nouns = ["".join(rng.choice("bcdfglmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(300)]
    verbs = ["opens", "closes", "saves", "prints", "moves", "copies"]
    for lang in langs:
        for split, n in (("train", 600), ("dev", 150), ("test", 240)):
            lines = []
            for k in range(n):
                words = [rng.choice(nouns), rng.choice(verbs), "the", rng.choice(nouns), "number", str(k), split]
                en = " ".join(words)
                lines.append(f"{en}\t{lang} {en} {lang}")
            path = root / "parallel" / split / f"en-{lang}.tsv.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(path, "wt", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")


def test_builder_is_deterministic_and_keeps_test_split_for_retrieval(tmp_path):
    _tiny_corpus(tmp_path / "corpus")
    tasks = ["tatoeba", "bucc2018", "pawsx", "xnli", "squad"]
    first = dt.build_demo_tasks(tmp_path / "corpus", tmp_path / "a", seed=3, tasks=tasks)
    second = dt.build_demo_tasks(tmp_path / "corpus", tmp_path / "b", seed=3, tasks=tasks)
    assert first["files"] == second["files"] and first["files"]
    other = dt.build_demo_tasks(tmp_path / "corpus", tmp_path / "c", seed=4, tasks=tasks)
    assert other["files"] != first["files"]
    # test-split sentences end with the word 'test'; only retrieval files may contain them
    for rel in first["files"]:
        text = (tmp_path / "a" / rel).read_text(encoding="utf-8")
        has_test = re.search(r"\btest\b", text) is not None
        retrieval_text = rel.startswith(("tatoeba", "bucc2018")) and not rel.endswith(".gold")
        assert has_test == retrieval_text, rel
    assert first["counts"]["tatoeba"]["de"]["pairs"] == 240  # all 240 clean test pairs (cap 400)
    assert first["counts"]["bucc2018"]["fr"]["dev"] == {"gold": 48, "fr": 84, "en": 84}
    assert sorted(first["counts"]["bucc2018"]) == ["de", "fr", "ru", "zh"]  # official only, es never added
    assert first["test_languages"]["pawsx"] == ["de", "en", "es", "fr", "ko"]  # zh: Latin text, no units


def test_too_few_official_languages_is_an_error_not_padding(tmp_path):
    _tiny_corpus(tmp_path / "corpus", langs=("de", "fr", "es", "ru"))
    (tmp_path / "out" / "bucc2018").mkdir(parents=True)
    (tmp_path / "out" / "bucc2018" / "old.gold").write_text("kept\n")
    with pytest.raises(dt.Veco2Error, match=r"demo bucc2018: only 3 non-English test language\(s\) \(de fr ru\) "
                                             r"among its official XTREME languages \(de fr ru zh\), need 4"):
        dt.build_demo_tasks(tmp_path / "corpus", tmp_path / "out", tasks=["bucc2018"])
    # QA pools under QA_MIN_POOL are skipped, named in the error
    with pytest.raises(dt.Veco2Error, match=r"demo tydiqa: only 0 .*skipped for size: \{'ru': 'only \d+ eval"):
        dt.build_demo_tasks(tmp_path / "corpus", tmp_path / "out", tasks=["tydiqa"])
    # a failed build leaves the previous output alone and no staging folder behind
    assert (tmp_path / "out" / "bucc2018" / "old.gold").read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]


def test_rebuild_replaces_the_task_folders_it_builds(tmp_path):
    _tiny_corpus(tmp_path / "corpus")
    for rel in ("tatoeba/tatoeba.bul-eng.bul", "xnli/test-bg.tsv"):  # stale: languages no longer built
        (tmp_path / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / rel).write_text("stale\n")
    manifest = dt.build_demo_tasks(tmp_path / "corpus", tmp_path / "out", tasks=["tatoeba"])
    assert not (tmp_path / "out" / "tatoeba" / "tatoeba.bul-eng.bul").exists()
    assert (tmp_path / "out" / "xnli" / "test-bg.tsv").exists()  # a task not rebuilt is left alone
    assert sorted(p.name for p in (tmp_path / "out" / "tatoeba").iterdir()) == sorted(
        f"tatoeba.{c}-eng.{s}" for c in ("deu", "fra", "kor", "rus", "spa", "cmn") for s in (c, "eng"))
    assert manifest["test_languages"] == {"tatoeba": ["de", "es", "fr", "ko", "ru", "zh"]}


def test_rebuilding_some_tasks_keeps_the_manifest_of_the_others(tmp_path):
    _tiny_corpus(tmp_path / "corpus")
    first = dt.build_demo_tasks(tmp_path / "corpus", tmp_path / "out", tasks=["tatoeba", "pawsx"])
    first_hashes = dict(first["files"])
    again = dt.build_demo_tasks(tmp_path / "corpus", tmp_path / "out", tasks=["pawsx"])
    assert again["test_languages"] == first["test_languages"]  # tatoeba's are kept, in task order
    assert list(again["counts"]) == list(first["counts"]) and again["counts"] == first["counts"]
    assert again["files"] == first_hashes  # deterministic: the rebuilt pawsx files are the same
    written = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert written["test_languages"] == first["test_languages"]
    assert "Label 0" in (tmp_path / "out" / "README.md").read_text(encoding="utf-8")  # the procedures


def test_bad_corpus_line_names_file_and_line(tmp_path):
    path = tmp_path / "parallel" / "test" / "en-de.tsv.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("good\tgut\nno tab here\n")
    with pytest.raises(dt.Veco2Error, match=r"en-de\.tsv\.gz:2: expected"):
        dt.load_corpus(tmp_path)

"""The hub path of every XTREME task, on local copies of google/xtreme and facebook/xnli in the hub's
parquet layout (``hub_fixtures``), read through the real ``datasets.load_dataset`` call with
``VECO2_HUB_MIRROR`` pointing at them -- no mock, no network (conftest keeps HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import datasets
import pytest

import hub_fixtures as hf
from veco2.errors import Veco2Error
from veco2.xtreme import data
from veco2.xtreme.registry import get_task


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """(hub mirror root, local-layout root) holding the same content."""
    root = tmp_path_factory.mktemp("hub-sources")
    return hf.write_hub_mirror(root / "mirror"), hf.write_local_layout(root / "local")


@pytest.fixture
def mirror(sources, monkeypatch, tmp_path):
    """VECO2_HUB_MIRROR set to the fixture mirror; datasets' cache in a temporary directory."""
    monkeypatch.setenv(data.HUB_MIRROR_ENV, str(sources[0]))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return sources


def _without_title(examples):
    return [{k: v for k, v in e.items() if k != "title"} for e in examples]


def test_fixture_configs_load_with_the_hub_features(mirror):
    """The mirror itself: the card's configs resolve to the right files and the features survive
    parquet (ClassLabel names included), as ``load_dataset`` sees them on the hub."""
    root = mirror[0]
    panx = datasets.load_dataset(str(root / "google" / "xtreme"), "PAN-X.de", split="test")
    assert panx.column_names == ["tokens", "ner_tags", "langs"]
    assert isinstance(panx.features["ner_tags"].feature, datasets.ClassLabel)
    assert panx.features["ner_tags"].feature.names == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    assert panx[0]["ner_tags"] == [1, 2, 0, 3, 0, 5]
    udpos = datasets.load_dataset(str(root / "google" / "xtreme"), "udpos.English", split="train")
    assert udpos.features["pos_tags"].feature.names[0::8] == ["ADJ", "NUM", "X"] and \
        udpos.features["pos_tags"].feature.num_classes == 17
    xnli = datasets.load_dataset(str(root / "google" / "xtreme"), "XNLI", split="test")
    assert xnli.column_names == ["language", "sentence1", "sentence2", "gold_label"]
    assert xnli.features["gold_label"] == datasets.Value("string")
    mnli = datasets.load_dataset(str(root / "facebook" / "xnli"), "en", split="train")
    assert mnli.features["label"].names == ["entailment", "neutral", "contradiction"]
    xquad = datasets.load_dataset(str(root / "google" / "xtreme"), "XQuAD.de")
    assert list(xquad) == ["validation"] and "title" not in xquad["validation"].column_names
    assert xquad["validation"][0]["answers"] == {"answer_start": [13], "text": ["braune Fuchs"]}
    pawsx = datasets.load_dataset(str(root / "google" / "xtreme"), "PAWS-X.de", split="train")
    assert pawsx.features["label"] == datasets.Value("string")


# Every split the zero-shot protocol reads, per task; the hub and the local layout hold the same content.
CASES = [("xnli", "train", "en"), ("xnli", "dev", "en"), ("xnli", "test", "en"), ("xnli", "test", "de"),
         ("xnli", "test", "fr"), ("pawsx", "train", "en"), ("pawsx", "dev", "en"), ("pawsx", "test", "de"),
         ("udpos", "train", "en"), ("udpos", "dev", "en"), ("udpos", "test", "de"),
         ("panx", "train", "en"), ("panx", "dev", "en"), ("panx", "test", "de"),
         ("xquad", "train", "en"), ("xquad", "dev", "en"), ("xquad", "test", "de"),
         ("mlqa", "train", "en"), ("mlqa", "dev", "en"), ("mlqa", "test", "de"),
         ("tydiqa", "train", "en"), ("tydiqa", "test", "en"), ("tydiqa", "test", "ar"),
         ("tatoeba", "test", "de"), ("tatoeba", "test", "fr")]


@pytest.mark.parametrize("task,split,lang", CASES, ids=["-".join(c) for c in CASES])
def test_hub_split_equals_the_local_reader(mirror, task, split, lang):
    hub = data.load_split(task, split, lang, hub=True)
    local = data.load_split(task, split, lang, data_root=mirror[1])
    if (task, split) == ("xquad", "test"):  # the hub's XQuAD configs have no title column
        assert {e["title"] for e in hub} == {""}
        hub, local = _without_title(hub), _without_title(local)
    assert hub == local
    assert len(hub) > 0


def test_hub_conversion_traps_hand_checked(mirror):
    # XNLI: google/xtreme mixes the languages in one config; string gold labels; German rows only
    assert data.load_split("xnli", "test", "de", hub=True) == [
        {"id": "test-de-0", "text_a": "Der Fuchs springt.", "text_b": "Der Fuchs springt.", "label": "entailment"},
        {"id": "test-de-1", "text_a": "Öffnen Sie das Dokument.", "text_b": "Speichern Sie die Datei.",
         "label": "neutral"}]
    # facebook/xnli train: ClassLabel ints -> names; the -1 ("no label") row is left out, not read as names[-1]
    train = data.load_split("xnli", "train", "en", hub=True)
    assert [(e["text_a"], e["label"]) for e in train] == [
        ("Open the document.", "neutral"), ("The dog is lazy.", "contradiction"), ("The fox jumps.", "entailment")]
    assert [e["id"] for e in train] == ["train-en-0", "train-en-1", "train-en-2"]
    # PAN-X / UD-POS: tag names from the ClassLabel feature
    assert data.load_split("panx", "test", "de", hub=True)[0]["tags"] == ["B-PER", "I-PER", "O", "B-ORG", "O", "B-LOC"]
    assert data.load_split("udpos", "test", "de", hub=True)[1] == {
        "id": "test-de-1", "words": ["und", "weil", "x"], "tags": ["CCONJ", "SCONJ", "X"]}
    # TyDiQA: train keeps english- ids; the test split is the dev split cut by the language-name prefix
    # ("englishx-1" shares the letters but not the prefix "english-")
    assert [e["id"] for e in data.load_split("tydiqa", "train", "en", hub=True)] == ["english-1", "english-2"]
    assert [e["id"] for e in data.load_split("tydiqa", "test", "en", hub=True)] == ["english-9"]
    assert [e["id"] for e in data.load_split("tydiqa", "test", "ar", hub=True)] == ["arabic-9", "arabic-10"]
    assert data.load_split("tydiqa", "dev", "en", hub=True) is None
    # XQuAD's only split is validation, read as the test set; MLQA.de.de's test split, not its validation
    assert [e["question"] for e in data.load_split("xquad", "test", "de", hub=True)] == ["Was springt?",
                                                                                       "Was speichern Sie?"]
    assert [e["id"] for e in data.load_split("mlqa", "test", "de", hub=True)] == ["m-de-0", "m-de-1"]
    assert data.load_split("mlqa", "test", "de", hub=True)[1]["answers"] == {"text": ["das Dokument"],
                                                                           "answer_start": [11]}
    # Tatoeba: config tatoeba.deu, the lines' trailing newlines dropped, English as the target side
    assert data.load_split("tatoeba", "test", "de", hub=True) == {"src": hf.DE, "tgt": hf.EN}


def test_bucc18_hub_rows_are_the_gold_pairs_and_mining_needs_the_corpus(mirror):
    task = get_task("bucc2018")
    local = data.load_split(task, "test", "de", data_root=mirror[1])
    rows, _ = data.load_hub_rows(task, "test", "de")
    # the loading script stores each pair's sentence ids in source_lang / target_lang
    assert [(r["source_lang"], r["target_lang"]) for r in rows] == local["gold"] == \
        [("de-000000001", "en-000000002"), ("de-000000003", "en-000000003")]
    src, tgt = dict(zip(local["src_ids"], local["src"])), dict(zip(local["tgt_ids"], local["tgt"]))
    assert [(r["source_sentence"], r["target_sentence"]) for r in rows] == [(src[s], tgt[t]) for s, t in local["gold"]]
    with pytest.raises(Veco2Error, match=r"only the gold pairs.*veco2 prefetch --tasks bucc2018"):
        data.load_split(task, "test", "de", hub=True)


def _prefetch_command(*argv) -> int:
    """``veco2 prefetch ARGV`` through its sub-command handler (the top-level CLI imports torch)."""
    import argparse

    from veco2.xtreme import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prefetch", *argv])
    return args.func(args)


def test_prefetch_from_the_mirror_writes_a_layout_the_local_readers_read_back(mirror, tmp_path, capsys):
    out = tmp_path / "prefetched"
    # one task per local format, plus the two hub datasets and both filters
    assert _prefetch_command("--tasks", "xnli", "panx", "xquad", "tatoeba", "--languages", "de", "--out", str(out)) == 0
    assert _prefetch_command("--tasks", "tydiqa", "--languages", "ar", "--out", str(out)) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(
        [f"{t}/{s}.tsv" for t in ("xnli", "panx") for s in ("train-en", "dev-en", "test-de")]
        + ["squad/train-v1.1.json", "squad/dev-v1.1.json", "xquad/xquad.de.json",
           "tatoeba/tatoeba.deu-eng.deu", "tatoeba/tatoeba.deu-eng.eng",
           "tydiqa/tydiqa-goldp-v1.1-train.json", "tydiqa/dev-goldp-ar.json", "manifest.json"])
    # the same examples as the fixture's local layout (= the hub's, test_hub_split_equals_the_local_reader)
    for task, lang in (("xnli", "de"), ("panx", "de"), ("xquad", "de"), ("tydiqa", "ar")):
        for split, split_lang in (("train", "en"), ("dev", "en"), ("test", lang)):
            again = data.load_split(task, split, split_lang, data_root=out)
            expected = data.load_split(task, split, split_lang, data_root=mirror[1])
            if (task, split) == ("xquad", "test"):
                again, expected = _without_title(again), _without_title(expected)
            assert again == expected, (task, split)
    assert data.load_split("tatoeba", "test", "de", data_root=out) == {"src": hf.DE, "tgt": hf.EN}
    capsys.readouterr()
    assert _prefetch_command("--verify", str(out)) == 0
    assert capsys.readouterr().out.startswith(f"{len(written) - 1} files match")
    (out / "xnli" / "test-de.tsv").write_text("x\ty\tneutral\n", encoding="utf-8")
    with pytest.raises(Veco2Error, match=r"xnli/test-de.tsv: sha256 .* does not match"):
        _prefetch_command("--verify", str(out))


def test_hub_errors_are_one_line(sources, monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    # no mirror, offline (conftest): names prefetch and the mirror variable
    monkeypatch.delenv(data.HUB_MIRROR_ENV, raising=False)
    with pytest.raises(Veco2Error) as offline:
        data.load_split("panx", "test", "de", hub=True)
    assert "\n" not in str(offline.value)
    assert "offline" in str(offline.value) and "veco2 prefetch --tasks panx" in str(offline.value) \
        and data.HUB_MIRROR_ENV in str(offline.value)
    # a mirror without the dataset: names the missing directory
    monkeypatch.setenv(data.HUB_MIRROR_ENV, str(tmp_path / "empty-mirror"))
    with pytest.raises(Veco2Error, match=r"empty-mirror/google/xtreme does not exist") as missing:
        data.load_split("panx", "test", "de", hub=True)
    assert "\n" not in str(missing.value)
    # a config the mirror lacks: datasets' several-line message folded into one line
    monkeypatch.setenv(data.HUB_MIRROR_ENV, str(sources[0]))
    with pytest.raises(Veco2Error, match=r"panx: loading google/xtreme PAN-X.fr split test from the hub mirror") as err:
        data.load_split("panx", "test", "fr", hub=True)
    assert "\n" not in str(err.value) and "veco2 prefetch --tasks panx" in str(err.value)
    # a language with no rows in a mixed config
    with pytest.raises(Veco2Error, match=r"has no rows for 'es'"):
        data.load_split("xnli", "test", "es", hub=True)

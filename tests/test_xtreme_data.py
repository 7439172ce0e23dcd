"""Local XTREME loaders on tiny official-format files, the tagging windows, and prefetch manifests."""

import json
from pathlib import Path

import pytest

from veco2.errors import InputError, Veco2Error
from veco2.xtreme import data
from veco2.xtreme.registry import get_task

EN = ["The quick brown fox jumps over the lazy dog.", "Open the document and save the file."]
DE = ["Der schnelle braune Fuchs springt über den faulen Hund.", "Öffnen Sie das Dokument und speichern Sie die Datei."]
FR = ["Le renard brun rapide saute par-dessus le chien paresseux.", "Ouvrez le document et enregistrez le fichier."]


def _squad(entries):
    """SQuAD v1.1 JSON from ``[(id, context, question, answer_text)]``."""
    paragraphs = [{"context": c, "qas": [{"id": i, "question": q,
                                          "answers": [{"text": a, "answer_start": c.index(a)}]}]}
                  for i, c, q, a in entries]
    return json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}, ensure_ascii=False)


def write_tiny_layout(root: Path, n_copies: int = 1) -> Path:
    """A tiny data root in the official local layout (a few examples per file) for every format."""
    def w(rel, text):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    pairs = [("Open the document.", "Save the file.", "neutral"),
             ("The fox jumps.", "The fox jumps.", "entailment"),
             ("The dog is lazy.", "The dog is quick.", "contradiction"),
             ("Save the file.", "Save the file.", "entailment")] * n_copies
    tsv = "".join(f"{a}\t{b}\t{l}\n" for a, b, l in pairs)
    for split in ("train-en", "dev-en", "test-en"):
        w(f"xnli/{split}.tsv", tsv)
    w("xnli/test-de.tsv", "Der Fuchs springt.\tDer Fuchs springt.\tentailment\n"
                          "Öffnen Sie das Dokument.\tSpeichern Sie die Datei.\tneutral\n")
    pos = ("The\tDET\nquick\tADJ\nfox\tNOUN\njumps\tVERB\n.\tPUNCT\n\n"
           "Open\tVERB\nthe\tDET\nfile\tNOUN\n\n") * n_copies
    for split in ("train-en", "dev-en", "test-en"):
        w(f"udpos/{split}.tsv", pos)
    w("udpos/test-de.tsv", "Der\tDET\nschnelle\tADJ\nFuchs\tNOUN\nspringt\tVERB\n.\tPUNCT\n\n")
    ner = ("Peter\tB-PER\nopened\tO\nGoogle\tB-ORG\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n\n") * n_copies
    for split in ("train-en", "dev-en", "test-en", "test-de"):
        w(f"panx/{split}.tsv", ner)
    qa_en = [(f"q{i}", EN[i % 2], "What jumps?" if i % 2 == 0 else "What is saved?",
              "brown fox" if i % 2 == 0 else "the file") for i in range(2 * n_copies)]
    w("squad/train-v1.1.json", _squad(qa_en))
    w("squad/dev-v1.1.json", _squad(qa_en[:2]))
    w("xquad/xquad.en.json", _squad(qa_en[:2]))
    w("xquad/xquad.de.json", _squad([("d0", DE[0], "Was springt?", "braune Fuchs"),
                                     ("d1", DE[1], "Was speichern Sie?", "die Datei")]))
    w("mlqa/test-context-en-question-en.json", _squad(qa_en[:2]))
    w("mlqa/test-context-de-question-de.json", _squad([("m0", DE[0], "Was springt?", "Fuchs")]))
    w("tydiqa/tydiqa-goldp-v1.1-train.json",
      _squad([("english-1", EN[0], "What jumps?", "fox"), ("arabic-1", DE[0], "Was?", "Fuchs"),
              ("english-2", EN[1], "What is saved?", "file")]))
    w("tydiqa/dev-goldp-en.json", _squad([("english-9", EN[1], "What opens?", "document")]))
    # Tatoeba (ISO 639-3 codes) and BUCC (id <TAB> sentence, gold pairs)
    w("tatoeba/tatoeba.deu-eng.deu", "\n".join(DE) + "\n")
    w("tatoeba/tatoeba.deu-eng.eng", "\n".join(EN) + "\n")
    w("tatoeba/tatoeba.fra-eng.fra", "\n".join(FR) + "\n")
    w("tatoeba/tatoeba.fra-eng.eng", "\n".join(EN) + "\n")
    for split in ("dev", "test"):
        w(f"bucc2018/de-en.{split}.de", "".join(f"de-{i}\t{s}\n" for i, s in enumerate(DE + ["Guten Morgen."])))
        w(f"bucc2018/de-en.{split}.en", "".join(f"en-{i}\t{s}\n" for i, s in enumerate(["Good morning, world."] + EN)))
        w(f"bucc2018/de-en.{split}.gold", "de-0\ten-1\nde-1\ten-2\n")
    return root


def test_classification_tagging_and_qa_loaders(tmp_path):
    root = write_tiny_layout(tmp_path)
    train = data.load_split("xnli", "train", "en", data_root=root)
    assert len(train) == 4 and train[0] == {"id": "train-en-0", "text_a": "Open the document.",
                                             "text_b": "Save the file.", "label": "neutral"}
    test_de = data.load_split("xnli", "test", "de", data_root=root)
    assert [e["label"] for e in test_de] == ["entailment", "neutral"]
    pos = data.load_split("udpos", "train", "en", data_root=root)
    assert [s["words"] for s in pos] == [["The", "quick", "fox", "jumps", "."], ["Open", "the", "file"]]
    assert pos[1]["tags"] == ["VERB", "DET", "NOUN"]
    squad = data.load_split("xquad", "train", "en", data_root=root)
    assert squad[0]["answers"] == {"text": ["brown fox"], "answer_start": [10]}
    assert data.load_split("mlqa", "test", "de", data_root=root)[0]["answers"]["text"] == ["Fuchs"]


def test_tydiqa_keeps_english_ids_for_training_and_has_no_dev(tmp_path):
    root = write_tiny_layout(tmp_path)
    train = data.load_split("tydiqa", "train", "en", data_root=root)
    assert [e["id"] for e in train] == ["english-1", "english-2"]
    assert data.load_split("tydiqa", "dev", "en", data_root=root) is None
    assert data.load_split("tydiqa", "test", "en", data_root=root)[0]["id"] == "english-9"


def test_retrieval_loaders(tmp_path):
    root = write_tiny_layout(tmp_path)
    tatoeba = data.load_split("tatoeba", "test", "de", data_root=root)
    assert tatoeba == {"src": DE, "tgt": EN}
    bucc = data.load_split("bucc2018", "dev", "de", data_root=root)
    assert bucc["src_ids"] == ["de-0", "de-1", "de-2"] and bucc["tgt"][1] == EN[0]
    assert bucc["gold"] == [("de-0", "en-1"), ("de-1", "en-2")]
    assert data.available_languages("tatoeba", root) == ["de", "fr"]


def test_bad_lines_name_file_and_line(tmp_path):
    root = write_tiny_layout(tmp_path)
    (root / "xnli" / "train-en.tsv").write_text("a\tb\tneutral\nc\td\tmaybe\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"train-en.tsv:2: label 'maybe' is not one of"):
        data.load_split("xnli", "train", "en", data_root=root)
    (root / "udpos" / "train-en.tsv").write_text("The\tDET\nfox\tNOUN\textra\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"train-en.tsv:2: expected 'word<TAB>tag'"):
        data.load_split("udpos", "train", "en", data_root=root)
    (root / "tatoeba" / "tatoeba.fra-eng.eng").write_text("one line\n", encoding="utf-8")
    with pytest.raises(InputError, match="must be line-aligned"):
        data.load_split("tatoeba", "test", "fr", data_root=root)
    (root / "bucc2018" / "de-en.dev.gold").write_text("de-0\ten-99\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"de-en.dev.gold:1: .*unknown sentence id"):
        data.load_split("bucc2018", "dev", "de", data_root=root)


def test_missing_local_data_names_prefetch(tmp_path, monkeypatch):
    with pytest.raises(Veco2Error, match=r"`veco2 prefetch --tasks panx --out DIR`.*dead"):
        data.load_split("panx", "test", "de", data_root=tmp_path)
    with pytest.raises(Veco2Error, match=r"veco2 prefetch --tasks bucc2018.*comparable.limsi.fr"):
        data.load_split("bucc2018", "test", "de", data_root=tmp_path)
    # the hub path while offline (conftest sets HF_DATASETS_OFFLINE=1) also names prefetch
    with pytest.raises(Veco2Error, match=r"offline.*veco2 prefetch --tasks xnli"):
        data.load_split("xnli", "test", "de", hub=True)


def test_zero_shot_protocol_and_language_checks(tmp_path):
    root = write_tiny_layout(tmp_path)
    with pytest.raises(Veco2Error, match="zero-shot"):
        data.load_split("xnli", "train", "de", data_root=root)
    with pytest.raises(Veco2Error, match="no language 'xx'"):
        data.load_split("xnli", "test", "xx", data_root=root)


def test_word_windows_cover_every_word_within_budget():
    counts = [1, 3, 2, 5, 1, 1, 9, 1]
    windows = data.word_windows(counts, budget=5)
    assert windows == [(0, 2), (2, 3), (3, 4), (4, 6), (6, 7), (7, 8)]
    assert [i for s, t in windows for i in range(s, t)] == list(range(len(counts)))
    for s, t in windows:  # each window fits, except a lone over-long word
        assert sum(counts[s:t]) <= 5 or t - s == 1
    assert data.word_windows([], budget=3) == []
    with pytest.raises(Veco2Error):
        data.word_windows([1], budget=0)


def test_prefetch_writers_round_trip_and_manifest_verify(tmp_path):
    from veco2.xtreme import prefetch

    root = write_tiny_layout(tmp_path / "src")
    out = tmp_path / "out"
    for task, split, lang in (("xnli", "train", "en"), ("panx", "test", "de"), ("xquad", "test", "de"),
                              ("tydiqa", "test", "en"), ("tatoeba", "test", "fr")):
        examples = data.load_split(task, split, lang, data_root=root)
        prefetch._write_split(get_task(task), split, lang, examples, out)
        again = data.load_split(task, split, lang, data_root=out)
        strip = (lambda xs: [{k: v for k, v in x.items() if k != "id"} for x in xs]) if task in ("xnli", "panx") \
            else (lambda xs: xs)
        assert strip(again) == strip(examples), task
    manifest = prefetch.write_manifest(out)
    assert "xquad/xquad.de.json" in manifest["files"] and "tatoeba/tatoeba.fra-eng.fra" in manifest["files"]
    assert prefetch.verify(out) == len(manifest["files"]) == 6
    (out / "panx" / "test-de.tsv").write_text("Peter\tB-ORG\n", encoding="utf-8")
    with pytest.raises(Veco2Error, match=r"panx/test-de.tsv: sha256 .* does not match the manifest"):
        prefetch.verify(out)
    (out / "panx" / "test-de.tsv").unlink()
    with pytest.raises(Veco2Error, match=r"panx/test-de.tsv: listed in the manifest but missing"):
        prefetch.verify(out)
    with pytest.raises(Veco2Error, match="no manifest.json"):
        prefetch.verify(tmp_path / "src")


def test_cli_registers_the_three_commands(tmp_path, capsys):
    import argparse

    from veco2.xtreme import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["finetune", "--task", "xnli", "--model", "m", "--out", "o", "--seeds", "1,2",
                              "learning_rate=3e-5", "--max-steps", "5"])
    assert args.seeds == [1, 2] and args.key_value_overrides == ["learning_rate=3e-5"] and args.max_steps == 5
    args = parser.parse_args(["evaluate", "--task", "tatoeba", "--model", "m", "--out", "o", "--layer", "all"])
    assert args.layer == "all" and args.pooling == "mean"
    root = write_tiny_layout(tmp_path / "src")
    from veco2.xtreme import prefetch
    prefetch.write_manifest(root)
    args = parser.parse_args(["prefetch", "--verify", str(root)])
    assert args.func(args) == 0 and "files match" in capsys.readouterr().out


def test_conll_files_with_untagged_tokens_or_space_columns_name_file_and_line(tmp_path):
    from veco2.errors import InputError
    from veco2.xtreme.data import read_conll

    mixed = tmp_path / "train-en.tsv"
    mixed.write_text("The\tDET\ndog\tNOUN\n\nA\nbird\tNOUN\n")
    with pytest.raises(InputError, match=r"train-en\.tsv:4: a token without a tag in a tagged file \(line 1 has one\)"):
        read_conll(mixed, labels=["DET", "NOUN"])
    spaces = tmp_path / "dev-en.tsv"
    spaces.write_text("The DET\ndog NOUN\n")
    with pytest.raises(InputError, match=r"dev-en\.tsv:1: columns separated by spaces, not a TAB"):
        read_conll(spaces, labels=["DET", "NOUN"])
    placeholder = tmp_path / "test-de.tsv"  # the official test files: words only, no tags at all
    placeholder.write_text("Der\nHund\n\nEin\n")
    assert [s["tags"] for s in read_conll(placeholder, labels=["DET", "NOUN"])] == [None, None]

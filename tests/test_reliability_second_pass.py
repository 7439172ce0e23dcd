"""Reliability, second pass: the failures found by feeding veco2 malformed inputs and kills from the
outside, each checked against hand-computed values (``docs/reliability.md`` lists them).

- long lines: a 200k-word pair is cut before dictionary matching (bounded time, counted);
- unreadable paths: a directory, a symbolic-link loop, gzip data without ``.gz``;
- the TEI skip log names its lines;
- stale atomic-write temporaries of a killed write are removed at resume;
- JSONL corpora, Moses pairs and FreeDict TEI dictionaries in the corpus layout of ``veco2 data prepare``;
- counted data oddities: header lines, untranslated copies, invisible-only fields, duplicate entries;
- strict YAML: duplicate keys, non-finite numbers, deep nesting;
- checked weight loading (:mod:`veco2.weights`): other models' weights, NaN, truncated and pickled files.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from veco2.errors import ConfigError, InputError, Veco2Error

ROOT = Path(__file__).resolve().parent.parent


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _put(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def _prepare(corpus: Path, out: Path, tokenizer: Path, *extra: str) -> int:
    from veco2 import cli

    return cli.main(["data", "prepare", "--out", str(out), f"data.corpus={corpus}", f"data.tokenizer={tokenizer}",
                     "data.max_length=48", *extra])


# ----------------------------------------------------------------------------------------------
# 2. Long lines: cut before matching


def test_a_200k_word_pair_is_prepared_within_seconds_and_counted(en_de_corpus, tiny_tokenizer_dir, tmp_path,
                                                                 caplog):
    corpus = tmp_path / "corpus"
    shutil.copytree(en_de_corpus, corpus)
    train = corpus / "parallel" / "train" / "en-de.tsv"
    def side(column: int) -> str:  # the corpus's sentences of one side, repeated to one line of 200k words
        words = [word for line in _lines(train) for word in line.split("\t")[column].split()]
        return " ".join((words * (200_000 // len(words) + 1))[:200_000])

    _put(train, [f"{side(0)}\t{side(1)}", *_lines(train)])  # ~1.2 MB per side
    dictionary = corpus / "dict" / "en-de.tsv"
    _put(dictionary, [*_lines(dictionary), "design\tDesign", "macro\tMakro", "module\tModul"])
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    assert _prepare(corpus, tmp_path / "out", tiny_tokenizer_dir) == 0
    seconds = time.monotonic() - started
    # before: matching ran over the whole line, quadratic (measured: 2.75 s at 16k words, 11.1 s at 32k)
    assert seconds < 60, seconds
    # The count is of pairs cut: the long pair, and each ordinary pair with a side over 46 tokens
    # (max_length - 2), counted here with the tokenizer itself.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    ordinary = [line.split("\t") for line in _lines(train)[1:]]
    over = sum(max(len(tokenizer(s, add_special_tokens=False)["input_ids"]),
                   len(tokenizer(t, add_special_tokens=False)["input_ids"])) > 46 for s, t in ordinary)
    assert 0 < over < len(ordinary) == 80  # both kinds are there: the count is not "all" or "none"
    manifest = json.loads((tmp_path / "out" / "shards" / "manifest.json").read_text())
    assert manifest["bi"]["de"]["truncated"] == over + 1 and manifest["bi"]["de"]["pairs"] == 81
    assert f"en-de: {over + 1} parallel pairs cut to data.max_length=48 tokens per side" in caplog.text
    from veco2.data.shards import PretrainingShards

    shards = PretrainingShards.open(tmp_path / "out" / "shards")
    src, tgt, spans = shards.bi(0)
    assert len(src) == len(tgt) == 46  # max_length - 2 (room for <s> and </s>)
    # The first 46 tokens of each side are "Delete Selected Design Creates a new macro, creates a new"
    # and "Ausgewähltes Design löschen Erstellt ein neues Makro" (the tokenizer's own offsets): design and
    # macro pair up there, "module" / "Modul" are cut away.
    def token_span(text: str, word: str) -> tuple[int, int]:
        start = text.index(word)
        offsets = tokenizer(text[:300], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        covered = [i for i, (a, b) in enumerate(offsets) if a < start + len(word) and b > start and b > a]
        return covered[0], covered[-1] + 1

    en, de = side(0), side(1)
    expected = {(*token_span(en, "Design"), *token_span(de, "Design")), (*token_span(en, "macro"), *token_span(de, "Makro"))}
    assert max(end for span in expected for end in span[1::2]) <= 46
    assert set(map(tuple, spans.tolist())) == expected


@pytest.fixture(scope="module")
def dog_tokenizer():
    """A hand-made Unigram tokenizer in which "dog", "Hund", "cat", "Katze" are one piece each
    (``▁dog`` ...), pre-tokenized as veco2's (NFKC, Metaspace); other text falls back to letters.
    Built from an explicit vocabulary: a trainer on a tiny corpus need not learn whole-word pieces."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words, letters = ["▁dog", "▁Hund", "▁cat", "▁Katze"], sorted(set("dogHundcatKatze"))
    vocab = [("<unk>", 0.0), *((w, -1.0) for w in words), ("▁", -5.0), *((c, -5.0) for c in letters)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=0))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    assert tokenizer.encode("dog dog", add_special_tokens=False).tokens == ["▁dog", "▁dog"]
    assert tokenizer.encode("Hund", add_special_tokens=False).tokens == ["▁Hund"]
    return tokenizer


def test_a_cut_pair_matches_as_its_kept_words_would(dog_tokenizer):
    """With one token per word, the first L tokens are the first L words: mining the whole 200k-word
    pair with max_length=L gives exactly the spans of mining those L words alone (repeats="all")."""
    from veco2.data.synonyms import MiningStats, SynonymMiner, mine_corpus

    miner = SynonymMiner([("dog", "Hund")], "en", "de", repeats="all")
    limit = 5
    stats = MiningStats()
    [cut] = mine_corpus([(" ".join(["dog"] * 200_000), " ".join(["Hund"] * 200_000))], miner, dog_tokenizer,
                        max_length=limit, stats=stats)
    [reference] = mine_corpus([(" ".join(["dog"] * limit), " ".join(["Hund"] * limit))], miner, dog_tokenizer)
    assert cut.spans == reference.spans == [(i, i + 1, j, j + 1) for i in range(5) for j in range(5)]
    assert (stats.truncated, stats.matches, stats.unmappable) == (1, 25, 0)


def test_the_result_does_not_depend_on_which_pairs_are_matched_while_encoding(monkeypatch, dog_tokenizer):
    from veco2.data import synonyms

    miner = synonyms.SynonymMiner([("dog", "Hund"), ("cat", "Katze")], "en", "de")
    pairs = [("dog cat dog dog", "Hund Katze Hund"), ("cat", "Katze"), ("dog " * 30, "Hund " * 3 + "Katze")]
    results = []
    for bound in (0, 10**9):  # nothing / everything matched speculatively while the batch is encoded
        monkeypatch.setattr(synonyms, "EARLY_MATCH_CHARS_PER_TOKEN", bound)
        results.append(list(synonyms.mine_corpus(pairs, miner, dog_tokenizer, max_length=3)))
    assert results[0] == results[1]
    assert results[0][0].spans == [(0, 1, 0, 1), (1, 2, 1, 2), (2, 3, 2, 3)]  # dog/Hund, cat/Katze, dog/Hund


def test_a_cut_inside_a_word_keeps_the_whole_word(dog_tokenizer):
    from veco2.data.synonyms import SynonymMiner, _BatchMiner, backend_of

    miner = SynonymMiner([("dog", "Hund")], "en", "de")
    batch = _BatchMiner(miner, backend_of(dog_tokenizer), max_length=1, overlap=False)
    offsets = [(0, 1), (1, 3), (4, 7)]  # "d" "og" | "cat": the first token ends inside "dog"
    assert batch._cut("dog cat", offsets, miner.src) == "dog"
    assert batch._cut("dog cat", [(0, 3), (4, 7)], miner.src) == "dog"
    assert batch._cut("dog", [(0, 3)], miner.src) == "dog"  # the whole text kept
    chars = SynonymMiner([("狗", "Hund")], "zh", "de")
    assert batch._cut("小狗跑", [(0, 1), (1, 2), (2, 3)], chars.src) == "小"  # unspaced: exactly the cut


# ----------------------------------------------------------------------------------------------
# 3, 5. Paths that are not readable files, gzip without .gz, TEI log


def test_unreadable_paths_are_one_line_errors_that_say_why(tmp_path):
    from veco2.fileio import iter_lines, read_json

    (tmp_path / "folder.txt").mkdir()
    (tmp_path / "loop.txt").symlink_to("loop.txt")
    (tmp_path / "dangling.txt").symlink_to("nowhere.txt")
    (tmp_path / "packed.tsv").write_bytes(gzip.compress(b"a\tb\n"))
    expected = {
        "folder.txt": "folder.txt: is a directory, expected a file",
        "loop.txt": "loop.txt: symbolic link loop",
        "dangling.txt": "dangling.txt: broken symbolic link (to nowhere.txt, which does not exist)",
        "missing.txt": "missing.txt: file not found",
        "packed.tsv": "packed.tsv: gzip-compressed data in a file without the .gz suffix (rename it to packed.tsv.gz)",
    }
    for name, message in expected.items():
        with pytest.raises(InputError) as err:
            list(iter_lines(tmp_path / name))
        assert str(err.value) == f"{tmp_path / name.split(':')[0]}: {message.split(': ', 1)[1]}"
    with pytest.raises(InputError, match="folder.txt: is a directory"):
        read_json(tmp_path / "folder.txt")


def test_tei_skips_are_logged_with_their_lines(tmp_path, caplog):
    from veco2.data.readers import ReadStats, read_freedict_tei

    path = _put(tmp_path / "eng-deu.tei", [
        '<TEI xmlns="http://www.tei-c.org/ns/1.0"><text><body>',
        "<entry><form><orth>cat</orth></form><sense><cit type='trans'><quote>Katze</quote></cit></sense></entry>",
        "<entry><form><orth>nothing</orth></form>",
        "  <sense><def>no translation</def></sense>",
        "</entry>",
        "<entry><sense><cit type='trans'><quote>Hund</quote></cit></sense></entry>",
        "</body></text></TEI>",
    ])
    stats = ReadStats()
    assert list(read_freedict_tei(path, stats)) == [("cat", ["Katze"])]
    assert stats.skipped_lines == {"entry without translation": [5], "entry without headword": [6]}
    caplog.set_level(logging.INFO)
    stats.log_summary()
    assert "skipped entry without headword: 1 (lines 6); entry without translation: 1 (lines 5)" in caplog.text
    no_lines = ReadStats(path="x", read=3, kept=2, skipped={"odd": 1})  # a reason without line numbers
    caplog.clear()
    no_lines.log_summary()
    assert caplog.records[-1].getMessage() == "x: 3 read, 2 kept, skipped odd: 1"


# ----------------------------------------------------------------------------------------------
# 6. Temporaries of a killed write


def _killed_atomic_write(directory: Path, name: str) -> None:
    """A real process killed (SIGKILL) inside ``atomic_write`` of ``directory/name``."""
    code = ("import sys; from veco2.fileio import atomic_write\n"
            "with atomic_write(sys.argv[1], 'wb') as handle:\n    handle.write(b'x' * 4096)\n")
    env = {**os.environ, "VECO2_FAULT": f"write:{name}"}
    done = subprocess.run([sys.executable, "-c", code, str(directory / name)], env=env, timeout=60)
    assert done.returncode == -9


def test_remove_stale_temporaries_removes_only_the_temporaries_of_killed_writes(tmp_path):
    from veco2.fileio import remove_stale_temporaries

    _killed_atomic_write(tmp_path, "checkpoint.pt")
    _killed_atomic_write(tmp_path, "results.json")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and left[0].startswith(".checkpoint.pt.") and left[1].startswith(".results.json.")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("keep")
    keep = ["checkpoint.pt", ".checkpoint.pt.tmp", "notes.tmp", ".abc.1234567.tmp", ".abc.12345678.tmpx",
            ".lock", "best.safetensors"]
    for name in keep:
        (tmp_path / name).write_text("keep")
    (tmp_path / ".tokenizer.abcd_123.tmp").mkdir()  # a tempfile.mkdtemp of a killed tokenizer save
    (tmp_path / ".tokenizer.abcd_123.tmp" / "tokenizer.json").write_text("{}")
    (tmp_path / ".link.zzzzzzzz.tmp").symlink_to(outside)
    removed = remove_stale_temporaries(tmp_path)
    assert removed == sorted([*left, ".link.zzzzzzzz.tmp", ".tokenizer.abcd_123.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert outside.read_text() == "keep"  # a link is removed, never what it points to
    assert remove_stale_temporaries(tmp_path / "absent") == []


def test_listing_checkpoints_at_resume_removes_interrupted_saves(tmp_path):
    from veco2.checkpoint import checkpoints

    complete = tmp_path / "step-000000004"
    complete.mkdir()
    (complete / "model.safetensors").write_text("")
    interrupted = tmp_path / "step-000000008.tmp"
    interrupted.mkdir()
    (interrupted / "optimizer.pt").write_bytes(b"\0" * 1024)
    _killed_atomic_write(interrupted, "trainer_state.json")
    _killed_atomic_write(tmp_path, "trainer_state.json")
    assert checkpoints(tmp_path) == [complete]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000004"]
    assert [p.name for p in complete.iterdir()] == ["model.safetensors"]


# ----------------------------------------------------------------------------------------------
# 7. JSONL, Moses and FreeDict TEI in the corpus layout


def _tei(pairs: list[tuple[str, str]]) -> list[str]:
    from xml.sax.saxutils import escape

    by_head: dict[str, list[str]] = {}
    for src, tgt in pairs:
        by_head.setdefault(src, []).append(tgt)
    body = [f"<entry><form><orth>{escape(head)}</orth></form><sense>"
            + "".join(f"<cit type='trans'><quote>{escape(t)}</quote></cit>" for t in targets)
            + "</sense></entry>" for head, targets in by_head.items()]
    return ['<TEI xmlns="http://www.tei-c.org/ns/1.0"><text><body>', *body, "</body></text></TEI>"]


def _shard_arrays(out: Path) -> dict[str, np.ndarray]:
    from veco2.data.shards import PretrainingShards

    shards = PretrainingShards.open(out / "shards")
    return {"mono": np.asarray(shards.mono_tokens), "src": np.asarray(shards.src_tokens),
            "tgt": np.asarray(shards.tgt_tokens), "spans": np.asarray(shards.spans)}


def test_jsonl_moses_and_tei_corpora_give_the_shards_of_the_same_tsv_corpus(en_de_corpus, tiny_tokenizer_dir,
                                                                           tmp_path):
    assert _prepare(en_de_corpus, tmp_path / "tsv", tiny_tokenizer_dir) == 0
    converted = tmp_path / "converted"
    shutil.copytree(en_de_corpus, converted)
    train = converted / "parallel" / "train" / "en-de.tsv"
    pairs = [tuple(line.split("\t")) for line in _lines(train)]
    _put(train.with_suffix(".jsonl"), [json.dumps({"translation": {"en": s, "de": t}}, ensure_ascii=False)
                                       for s, t in pairs])
    train.unlink()
    for split in ("dev", "test"):  # Moses: two line-aligned files
        tsv = converted / "parallel" / split / "en-de.tsv"
        rows = [line.split("\t") for line in _lines(tsv)]
        _put(tsv.with_suffix(".en"), [s for s, _ in rows])
        _put(tsv.with_suffix(".de"), [t for _, t in rows])
        tsv.unlink()
    mono = converted / "mono" / "de.txt"
    _put(mono.with_suffix(".jsonl"), [json.dumps({"text": line}, ensure_ascii=False) for line in _lines(mono)])
    mono.unlink()
    dictionary = converted / "dict" / "en-de.tsv"
    _put(dictionary.with_suffix(".tei"), _tei([tuple(line.split("\t")) for line in _lines(dictionary)]))
    dictionary.unlink()

    from veco2.data.corpus import Corpus

    corpus = Corpus(converted)
    assert corpus.languages() == ["de"]
    assert corpus.parallel("de", "dev") == Corpus(en_de_corpus).parallel("de", "dev")
    assert _prepare(converted, tmp_path / "converted-out", tiny_tokenizer_dir) == 0
    expected, got = _shard_arrays(tmp_path / "tsv"), _shard_arrays(tmp_path / "converted-out")
    assert len(expected["spans"]) > 50  # the dictionary found words: the comparison is not empty
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    manifest = json.loads((tmp_path / "converted-out" / "shards" / "manifest.json").read_text())
    assert manifest["bi"]["de"]["dictionary"].endswith("dict/en-de.tei")


def test_jsonl_readers_hand_made(tmp_path):
    from veco2.data.readers import ReadStats, read_monolingual_jsonl, read_parallel_jsonl

    path = _put(tmp_path / "p.jsonl", ['{"en": "Hello", "de": "Hallo"}', "",
                                       '{"translation": {"en": " Open ", "de": "Öffnen"}}',
                                       '{"en": "Same", "de": "Same"}', '{"en": "\\u200b", "de": "x"}'])
    stats = ReadStats()
    assert list(read_parallel_jsonl(path, "en", "de", stats)) == [("Hello", "Hallo"), ("Open", "Öffnen")]
    assert stats.skipped == {"empty line": 1, "target equals source (untranslated)": 1,
                             "side of invisible characters only": 1}
    assert list(read_monolingual_jsonl(_put(tmp_path / "m.jsonl", ['{"text": "Eins"}', '{"text": "  "}']))) == ["Eins"]
    for lines, message in ((['{"en": "a", "de": 3}'], "p.jsonl:1: field 'de' must be a string, got int"),
                           (['{"en": "a", "de": "b"}', '["a", "b"]'], "p.jsonl:2: expected a JSON object per line"),
                           (['{"en": "a"'], "p.jsonl:1: corrupt JSON line")):
        _put(path, lines)
        with pytest.raises(InputError, match=message.replace("(", r"\(")):
            list(read_parallel_jsonl(path, "en", "de"))


# ----------------------------------------------------------------------------------------------
# 8. Data oddities: counted


@pytest.mark.parametrize("fields,header", [
    (("en", "de"), True), (("source", "target"), True), (("src_text", "tgt_text"), True), (("EN", "zh-CN"), True),
    (("the", "der"), False), (("de", "fr"), False), (("Hello", "Hallo"), False), (("en", "en"), False),
    (("Open the file", "Datei öffnen"), False),
])
def test_header_detection(fields, header):
    from veco2.data.readers import looks_like_header

    assert looks_like_header(fields) is header


def test_reader_skips_headers_copies_and_invisible_fields(tmp_path):
    from veco2.data.readers import ReadStats, read_dictionary, read_monolingual, read_parallel

    path = _put(tmp_path / "p.tsv", ["source\ttarget", "Hello\tHallo", "en\tde", "OK\tOK", "\u200b\u2060\tNull",
                                     "Tab\t\u00ad"])
    stats = ReadStats()
    assert list(read_parallel(path, stats)) == [("Hello", "Hallo"), ("en", "de")]  # a header only as line 1
    assert stats.skipped_lines == {"header line": [1], "target equals source (untranslated)": [4],
                                   "side of invisible characters only": [5, 6]}
    mono = _put(tmp_path / "m.txt", ["\u200b", "Text", "\ufeff\u200c "])
    stats = ReadStats()
    assert list(read_monolingual(mono, stats)) == ["Text"]
    assert stats.skipped_lines == {"invisible characters only": [1, 3]}
    stats = ReadStats()
    assert read_dictionary(_put(tmp_path / "d.txt", ["en de", "cat Katze", "\u200b Null"]), stats) == [("cat", "Katze")]
    assert stats.skipped == {"header line": 1, "side of invisible characters only": 1}


def test_duplicate_dictionary_entries_are_counted(tmp_path, caplog):
    from veco2.data.synonyms import SynonymMiner

    # "House/haus" and the second "house/Haus" repeat "house/Haus" after case folding; "house/Heim" is new
    miner = SynonymMiner([("house", "Haus"), ("House", "haus"), ("house", "Heim"), ("house", "Haus"),
                          ("dog", "Hund")], "en", "de")
    assert (miner.duplicate_entries, len(miner)) == (2, 3)
    caplog.set_level(logging.INFO)
    path = _put(tmp_path / "en-de.tsv", ["en\tde", "house\tHaus", "HOUSE\tHAUS", "dog\tHund"])
    assert len(SynonymMiner.from_tsv(path, "en", "de")) == 2
    assert f"{path}:1: skipped a header line" in caplog.text
    assert f"{path}: merged 1 of 3 entries that repeat an earlier entry" in caplog.text


# ----------------------------------------------------------------------------------------------
# 4. Strict YAML


@pytest.mark.parametrize("text,message", [
    ("training:\n  lr: 1.0e-4\n  batch_size: 8\n  lr: 3.0e-4\n", "cfg.yaml:4: duplicate key 'lr' (first at line 2)"),
    ("a: {b: 1, b: 2}\n", "cfg.yaml:1: duplicate key 'b' (first at line 1)"),
    ("objectives:\n  seq:\n    weight: .nan\n", "cfg.yaml:3: '.nan' is not a finite number"),
    ("objectives:\n  tok:\n    weight: .inf\n", "cfg.yaml:3: '.inf' is not a finite number"),
    ("x: [1.0, -.Inf]\n", "cfg.yaml:1: '-.Inf' is not a finite number"),
    ("x: 1.0e+999\n", "cfg.yaml:1: '1.0e+999' is not a finite number"),
    ("[" * 10_000 + "]" * 10_000, "cfg.yaml:1: nested deeper than 100 levels"),
    ("".join(" " * i + f"k{i}:\n" for i in range(10_000)), "cfg.yaml:101: nested deeper than 100 levels"),
    ("a: [1\n", "cfg.yaml:2: invalid YAML: expected ',' or ']'"),
])
def test_strict_yaml_rejects_with_file_and_line(text, message):
    from veco2.fileio import load_yaml

    with pytest.raises(InputError) as err:
        load_yaml(text, source="cfg.yaml")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="^cfg.yaml:"):
        load_yaml(text, source="cfg.yaml", error=ConfigError)


def test_strict_yaml_reads_every_yaml_file_of_the_repository_as_safe_load_does(tmp_path):
    from veco2.fileio import load_yaml

    files = sorted({*ROOT.glob("config/**/*.yaml"), *ROOT.glob("ablations/**/*.yaml"),
                    *ROOT.glob("veco2/xtreme/tasks/*.yaml"), *ROOT.glob("profiles/**/*.yaml")})
    assert len(files) > 10
    for path in files:
        assert load_yaml(path) == yaml.safe_load(path.read_text(encoding="utf-8")), path
    merged = "base: &b {lr: 1.0, steps: 2}\nrun:\n  <<: *b\n  lr: 0.5\n"  # a merge may override, by design
    assert load_yaml(merged) == {"base": {"lr": 1.0, "steps": 2}, "run": {"lr": 0.5, "steps": 2}}
    assert load_yaml("") is None and load_yaml("w: 'nan'\n") == {"w": "nan"}
    with pytest.raises(InputError, match="missing.yaml: file not found"):
        load_yaml(tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------------------------
# 1, 3. Checked weight loading


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory) -> Path:
    """A tiny XLM-R masked-LM checkpoint, as `veco2 pretrain` exports it (with lm_head, no pooler)."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=40)
    out = tmp_path_factory.mktemp("tiny-mlm")
    XLMRobertaForMaskedLM(config).save_pretrained(out)
    return out


def _variant(tiny_mlm: Path, tmp_path: Path, edit) -> Path:
    """A copy of the tiny checkpoint whose state dict ``edit(state)`` changed."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "variant"
    shutil.copytree(tiny_mlm, out)
    state = load_file(tiny_mlm / "model.safetensors")
    save_file(edit(state) or state, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_a_fitting_checkpoint_loads_with_its_weights(tiny_mlm):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

    from veco2.weights import load_checked

    saved = load_file(tiny_mlm / "model.safetensors")
    model = load_checked(AutoModelForSequenceClassification, tiny_mlm, num_labels=3)  # head: new by design
    assert torch.equal(model.roberta.encoder.layer[1].output.dense.weight,
                       saved["roberta.encoder.layer.1.output.dense.weight"])
    load_checked(AutoModelForMaskedLM, tiny_mlm)
    load_checked(AutoModel, tiny_mlm, new_head_prefixes=("pooler.",))
    with pytest.raises(Veco2Error, match=r"2 weights of the model are not in this file \(pooler.dense.bias, "
                                         r"pooler.dense.weight\)"):
        load_checked(AutoModel, tiny_mlm)  # a base model has no head: the missing pooler must be named


def test_pretraining_from_a_checkpoint_needs_its_masked_lm_head(tiny_mlm, tmp_path):
    """``pretrain model.init_from=DIR`` continues the masked-LM objective: there no weight is new by
    design, so ``new_head_prefixes=()`` makes a checkpoint without ``lm_head`` (an encoder-only export)
    an error instead of an MLM head at random."""
    from transformers import AutoModelForMaskedLM

    from veco2.weights import load_checked

    load_checked(AutoModelForMaskedLM, tiny_mlm, new_head_prefixes=(), attn_implementation="eager")
    headless = _variant(tiny_mlm, tmp_path, lambda s: {k: v for k, v in s.items() if not k.startswith("lm_head.")})
    with pytest.raises(Veco2Error, match=r"model.safetensors: 6 weights of the model are not in this file "
                                         r"\(lm_head.bias, lm_head.decoder.bias, lm_head.dense.bias, ... \(6 in all\)\)"):
        load_checked(AutoModelForMaskedLM, headless, new_head_prefixes=())
    load_checked(AutoModelForMaskedLM, headless)  # the default takes lm_head for a new head: hence ()


def test_pretrain_init_from_refuses_what_does_not_fit(tiny_mlm, tmp_path):
    """The path ``pretrain model.init_from=DIR`` takes (``model.build_encoder``): a headless export, NaN
    weights and a truncated file are one-line errors naming the file; a fitting checkpoint loads."""
    import torch

    from veco2.config import ModelConfig
    from veco2.model import build_encoder

    def build(directory):
        return build_encoder(ModelConfig(init_from=str(directory), attn_implementation="eager"), 60, 1)

    assert build(tiny_mlm).lm_head.dense.weight.shape == (16, 16)
    headless = _variant(tiny_mlm, tmp_path / "a", lambda s: {k: v for k, v in s.items() if not k.startswith("lm_head.")})
    nan = _variant(tiny_mlm, tmp_path / "b", lambda s: {**s, "roberta.encoder.layer.0.output.dense.bias":
                                                          torch.full((16,), float("nan"))})
    truncated = tmp_path / "c"
    shutil.copytree(tiny_mlm, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    for directory, message in [(headless, "6 weights of the model are not in this file"),
                               (nan, "weight roberta.encoder.layer.0.output.dense.bias holds 16 non-finite"),
                               (truncated, "cannot load the model weights (SafetensorError")]:
        with pytest.raises(Veco2Error) as err:
            build(directory)
        assert str(err.value).startswith(f"{directory / 'model.safetensors'}: ") and message in str(err.value)
        assert "\n" not in str(err.value)


def test_other_models_weights_are_an_error_naming_the_file_and_tensors(tiny_mlm, tmp_path):
    from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2Model

    from veco2.weights import load_checked

    other = tmp_path / "other"
    shutil.copytree(tiny_mlm, other)
    GPT2Model(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=60, n_positions=40)).save_pretrained(tmp_path / "gpt")
    shutil.copy(tmp_path / "gpt" / "model.safetensors", other / "model.safetensors")
    with pytest.raises(Veco2Error) as err:
        load_checked(AutoModelForSequenceClassification, other)
    assert str(err.value).startswith(
        f"{other / 'model.safetensors'}: 37 weights of the model are not in this file (roberta.embeddings.LayerNorm.bias, "
        "roberta.embeddings.LayerNorm.weight, roberta.embeddings.position_embeddings.weight, ... (37 in all))")
    assert "\n" not in str(err.value)


def test_extra_layers_and_other_shapes_are_errors(tiny_mlm, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from veco2.weights import load_checked

    def extra_layer(state):
        state.update({k.replace("layer.1.", "layer.2."): v.clone() for k, v in list(state.items()) if "layer.1." in k})

    deeper = _variant(tiny_mlm, tmp_path / "a", extra_layer)
    with pytest.raises(Veco2Error, match=r"model.safetensors: 16 encoder weights in this file have no place in the "
                                         r"XLMRobertaForSequenceClassification .*layer\.2\.attention"):
        load_checked(AutoModelForSequenceClassification, deeper)
    import torch

    wider = _variant(tiny_mlm, tmp_path / "b",
                     lambda s: s.update({"roberta.embeddings.word_embeddings.weight": torch.zeros(70, 16)}))
    with pytest.raises(Veco2Error, match=r"model.safetensors: cannot load the model weights \(1 weights have another "
                                         r"shape than config.json gives them: roberta.embeddings.word_embeddings.weight\)"):
        load_checked(AutoModelForSequenceClassification, wider)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_an_error_naming_the_tensor(tiny_mlm, tmp_path, value):
    from transformers import AutoModelForSequenceClassification

    from veco2.weights import load_checked

    def poison(state):
        state["roberta.encoder.layer.1.output.dense.weight"][3, 4] = value

    broken = _variant(tiny_mlm, tmp_path, poison)
    with pytest.raises(Veco2Error, match=r"model.safetensors: weight roberta.encoder.layer.1.output.dense.weight "
                                         r"holds 1 non-finite value\(s\) \(NaN or inf\) of 512"):
        load_checked(AutoModelForSequenceClassification, broken)


def test_unreadable_weight_files_are_one_line_errors(tiny_mlm, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from veco2.weights import load_checked

    def attempt(directory: Path) -> str:
        with pytest.raises(Veco2Error) as err:
            load_checked(AutoModelForSequenceClassification, directory)
        assert "\n" not in str(err.value)
        return str(err.value)

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_mlm, truncated)
    data = (tiny_mlm / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert attempt(truncated).startswith(f"{truncated / 'model.safetensors'}: cannot load the model weights "
                                         "(SafetensorError: ")

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_mlm, pickled)
    (pickled / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"roberta.embeddings.word_embeddings.weight": RunsCode()}, pickled / "pytorch_model.bin")
    assert attempt(pickled) == (f"{pickled / 'pytorch_model.bin'}: cannot load the model weights (UnpicklingError: "
                                "a pickle that torch.load(weights_only=True) refuses: it holds objects other than "
                                "tensors, and loading it could run code)")
    assert not marker.exists()

    torch.save(load_file(tiny_mlm / "model.safetensors"), pickled / "pytorch_model.bin")  # a plain tensor file
    load_checked(AutoModelForSequenceClassification, pickled)
    data = (pickled / "pytorch_model.bin").read_bytes()
    (pickled / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    assert attempt(pickled).startswith(f"{pickled / 'pytorch_model.bin'}: cannot load the model weights (")

    (pickled / "pytorch_model.bin").unlink()
    assert attempt(pickled).startswith(f"{pickled}: cannot load the model weights (OSError: ")


# ----------------------------------------------------------------------------------------------
# 1 and 5, at the commands: finetune / evaluate refuse weights that do not fit; QA skips say which


def _broken_copy(tiny_pretrained_dir: Path, tmp_path: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    out = tmp_path / "broken-model"
    shutil.copytree(tiny_pretrained_dir, out)
    state = load_file(out / "model.safetensors")
    save_file(edit(state), out / "model.safetensors", metadata={"format": "pt"})
    return out


def _renamed(state):
    return {f"other.{k}": v for k, v in state.items()}


def _nan_in_one(state):
    import torch

    name = sorted(state)[0]
    return {**state, name: torch.full_like(state[name], float("nan"))}


@pytest.mark.parametrize("edit, message", [(_renamed, r"weights of the model are not in this file"),
                                           (_nan_in_one, r"non-finite")])
@pytest.mark.parametrize("command", ["finetune", "evaluate"])
def test_finetune_and_evaluate_refuse_weights_that_do_not_fit(tiny_pretrained_dir, tmp_path, capsys, edit, message,
                                                              command):
    from veco2 import cli

    model = _broken_copy(tiny_pretrained_dir, tmp_path, edit)
    args = {"finetune": ["finetune", "--task", "pawsx", "--languages", "de", "en", "--max-steps", "1",
                         "max_train_examples=8", "batch_size=4", "--seeds", "1"],
            "evaluate": ["evaluate", "--task", "tatoeba", "--languages", "de"]}[command]
    assert cli.main([*args, "--model", str(model), "--out", str(tmp_path / "out")]) == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # one line
    assert err.startswith(f"veco2: error: {model / 'model.safetensors'}: ") and re.search(message, err)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("results.json"))


def test_skipped_qa_questions_name_the_file_and_the_ids(tiny_tokenizer_dir, caplog):
    from transformers import AutoTokenizer

    from veco2.xtreme.families import QuestionAnswering
    from veco2.xtreme.finetune import resolve_hyperparameters
    from veco2.xtreme.registry import get_task

    task = get_task("xquad")
    family = QuestionAnswering(task, AutoTokenizer.from_pretrained(tiny_tokenizer_dir), resolve_hyperparameters(task))
    family.source = "squad/train-v1.1.json"
    context = "The cat sat on the mat."
    examples = [{"id": "q1", "question": "Who sat?", "context": context, "answers": {"text": ["cat"], "answer_start": [4]}},
                {"id": "q2", "question": "What?", "context": context, "answers": {"text": [], "answer_start": []}},
                {"id": "q3", "question": "Where?", "context": context, "answers": {"text": ["mat"], "answer_start": [0]}}]
    caplog.set_level(logging.WARNING)
    assert family.train_features(examples)  # q1 is kept
    assert ("xquad: left out 2 training questions of squad/train-v1.1.json without a locatable answer -- "
            "no answer: 1 (ids q2); answer text not at answer_start: 1 (ids q3)") in caplog.text

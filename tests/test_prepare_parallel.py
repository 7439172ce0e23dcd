"""Shard preparation in chunks: the same bytes as the one-process builder it replaced, whatever the
number of workers; a killed preparation resumes from its complete parts; the filters count their skips."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from veco2.config import load_config
from veco2.data.corpus import Corpus
from veco2.data.sources import DUPLICATE, TOO_LONG, WRONG_SCRIPT, CorpusSources
from veco2.data.synonyms import SynonymMiner, mine_corpus, pack_spans
from veco2.data.tokenizer import load_tokenizer
from veco2.fileio import FAULT_ENV
from veco2.trainer import prepare_data


def _config(corpus, tokenizer, *extra):
    return load_config(overrides=[f"data.corpus={corpus}", f"data.tokenizer={tokenizer}", "data.max_length=48",
                                  "data.prepare_chunk_size=64", *extra])


def _hashes(shard_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(shard_dir.glob("*.np[yz]"))}


def _reference_shards(corpus_dir: Path, tokenizer, languages: list[str], max_length: int, out: Path) -> None:
    """The shard files as the one-process builder wrote them before chunked preparation (kept here as
    the reference): whole languages in Python lists, ``np.save`` and ``np.savez``."""
    corpus, limit = Corpus(corpus_dir), max_length - 2
    out.mkdir(parents=True)
    mono, mono_lang = [], []
    for lang_id, lang in enumerate(["en", *languages]):
        ids = tokenizer(corpus.monolingual(lang), add_special_tokens=False)["input_ids"]
        kept = [seq[:limit] for seq in ids if seq]
        mono += kept
        mono_lang += [lang_id] * len(kept)
    src, tgt, bi_lang, spans = [], [], [], []
    for lang_id, lang in enumerate(languages, 1):
        path = corpus.dictionary_path(lang)
        miner = SynonymMiner.from_file(path, "en", lang) if path else SynonymMiner([], "en", lang)
        for mined in mine_corpus(corpus.parallel(lang), miner, tokenizer, batch_size=1024, max_length=limit):
            if mined.src_ids and mined.tgt_ids:
                src.append(mined.src_ids), tgt.append(mined.tgt_ids), spans.append(mined.spans), bi_lang.append(lang_id)
    for name, seqs in (("mono", mono), ("bi.src", src), ("bi.tgt", tgt)):
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in seqs], out=offsets[1:])
        np.save(out / f"{name}.tokens.npy", np.asarray([t for s in seqs for t in s], dtype=np.int32))
        np.save(out / f"{name}.offsets.npy", offsets)
    np.save(out / "mono.lang.npy", np.asarray(mono_lang, dtype=np.int16))
    np.save(out / "bi.lang.npy", np.asarray(bi_lang, dtype=np.int16))
    span_rows, span_offsets = pack_spans(spans)
    np.savez(out / "bi.spans.npz", spans=span_rows, offsets=span_offsets, format_version=np.int64(1))


@pytest.fixture(scope="module")
def one_worker(small_corpus_dir, tiny_tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one-worker")
    prepare_data(_config(small_corpus_dir, tiny_tokenizer_dir), out)
    return out / "shards"


def test_chunked_shards_are_the_bytes_of_the_one_process_builder(one_worker, small_corpus_dir, tiny_tokenizer_dir,
                                                                 tmp_path):
    _reference_shards(small_corpus_dir, load_tokenizer(tiny_tokenizer_dir), ["de", "zh"], 48, tmp_path / "reference")
    expected = _hashes(tmp_path / "reference")
    assert len(expected) == 9 and _hashes(one_worker) == expected
    manifest = json.loads((one_worker / "manifest.json").read_text())
    assert manifest["prepare"]["parts_built"] > 6  # 400 pairs and sentences per language in chunks of 64
    assert manifest["files"] == expected


def test_two_workers_write_the_same_bytes_and_every_part_is_traceable(one_worker, small_corpus_dir,
                                                                      tiny_tokenizer_dir, tmp_path):
    prepare_data(_config(small_corpus_dir, tiny_tokenizer_dir, "data.prepare_workers=2"), tmp_path)
    assert _hashes(tmp_path / "shards") == _hashes(one_worker)
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["prepare"]["workers"] == 2 and not (tmp_path / "shards" / "parts").exists()
    de = [p for p in manifest["parts"] if p["role"] == "parallel" and p["language"] == "de"]
    assert [p["records"] for p in de] == [[i, min(i + 64, 400)] for i in range(0, 400, 64)]
    assert de[0]["sources"] == [[str(small_corpus_dir / "parallel/train/en-de.tsv"), 1, 64]]
    assert all(len(p["sha256"]) == 64 for p in manifest["parts"])


def _prepare_in_subprocess(corpus, tokenizer, out, fault=None):
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "veco2.cli", "data", "prepare", "--out", str(out),
                           f"data.corpus={corpus}", f"data.tokenizer={tokenizer}", "data.max_length=48",
                           "data.prepare_chunk_size=64"], env=env, capture_output=True, text=True)


def test_a_killed_preparation_resumes_from_its_complete_parts(one_worker, small_corpus_dir, tiny_tokenizer_dir,
                                                             tmp_path):
    killed = _prepare_in_subprocess(small_corpus_dir, tiny_tokenizer_dir, tmp_path, "prepare-part:parallel-de-000002")
    assert killed.returncode == -9, killed.stderr[-2000:]
    parts = tmp_path / "shards" / "parts"
    done = sorted(p.stem for p in parts.glob("*.json") if p.name != "settings.json")
    assert "parallel-de-000002" in done and "parallel-de-000003" not in done
    assert not (tmp_path / "shards" / "manifest.json").exists()
    stale = parts / ".parallel-de-000003.npz.abcd1234.tmp"  # what a kill inside atomic_write leaves
    stale.write_bytes(b"half")
    resumed = _prepare_in_subprocess(small_corpus_dir, tiny_tokenizer_dir, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _hashes(tmp_path / "shards") == _hashes(one_worker)
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["prepare"]["parts_reused"] == len(done)
    assert manifest["prepare"]["parts_built"] == len(manifest["parts"]) - len(done) > 0
    assert "removed .parallel-de-000003.npz.abcd1234.tmp" in resumed.stderr


def test_filters_skip_duplicates_long_lines_and_other_scripts_and_count_them(small_corpus_dir, tiny_tokenizer_dir,
                                                                             tmp_path):
    corpus = tmp_path / "corpus"
    for folder in ("parallel/train", "mono", "dict"):
        (corpus / folder).mkdir(parents=True)
    pairs = (small_corpus_dir / "parallel/train/en-de.tsv").read_text(encoding="utf-8").splitlines()[:100]
    extra = [pairs[3], pairs[3].upper().replace("\t", " \t  "),  # two copies of pair 3 (case, spaces)
             "A very long line " * 80 + "\tEine sehr lange Zeile",
             "Open the file.\tОткройте файл."]  # target in Cyrillic, not Latin
    (corpus / "parallel/train/en-de.tsv").write_text("\n".join(pairs + extra) + "\n", encoding="utf-8")
    mono = [p.split("\t")[1] for p in pairs]
    (corpus / "mono/de.txt").write_text("\n".join(mono + [mono[0], "Это русский текст."]) + "\n", encoding="utf-8")
    (corpus / "mono/en.txt").write_text("\n".join(p.split("\t")[0] for p in pairs) + "\n", encoding="utf-8")
    cfg = _config(corpus, tiny_tokenizer_dir, "data.dedup=true", "data.max_chars=1000", "data.min_script_share=0.5")
    _, shards = prepare_data(cfg, tmp_path / "out")
    skipped = shards.manifest["skipped"]
    assert skipped[str(corpus / "parallel/train/en-de.tsv")] == {DUPLICATE: 2, TOO_LONG: 1, WRONG_SCRIPT: 1}
    assert skipped[str(corpus / "mono/de.txt")] == {DUPLICATE: 1, WRONG_SCRIPT: 1}
    assert shards.manifest["bi"]["de"]["pairs"] == 100 and shards.manifest["mono"]["de"]["sentences"] == 100
    assert shards.manifest["filters"] == {"dedup": True, "max_chars": 1000, "min_script_share": 0.5}
    part = shards.manifest["parts"][-1]
    assert part["role"] == "parallel" and part["records"] == [64, 100]
    assert part["sources"] == [[str(corpus / "parallel/train/en-de.tsv"), 65, 100]]


def test_preparation_settings_are_checked(small_corpus_dir, tiny_tokenizer_dir, tmp_path):
    from veco2.errors import ConfigError

    for override, message in (("data.prepare_workers=0", r"data\.prepare_workers: got 0, must be >= 1"),
                              ("data.min_script_share=2", r"data\.min_script_share: got 2\.0, must be between")):
        with pytest.raises(ConfigError, match=message):
            CorpusSources(_config(small_corpus_dir, tiny_tokenizer_dir, override).data)

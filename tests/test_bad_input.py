"""Bad input, table-driven: every case ends in a one-line error or a counted, logged skip.

Each case builds a small broken input in a temporary directory and runs the real command line
(``veco2.cli.main``, in-process so that the table stays fast; one case runs a subprocess to check
the process-level behaviour).  Expected outcomes:

- ``Error(parts...)``: exit status != 0, exactly one line on stderr, ``veco2: error: `` first, every
  part (file name, ``file:line``, the problem) in it, no ``Traceback``;
- ``Skip(check)``: exit status 0, and ``check(tmp, log)`` finds the count in the run's log and in
  the data card (the shards' ``manifest.json``);
- ``Read(check)``: valid input in an awkward encoding (BOM, CRLF) read correctly.

A few inputs have no command of their own (a Moses file pair, a FreeDict TEI file): their cases call
the reader and check the :class:`~veco2.errors.InputError` message the CLI would print.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from conftest import tiny_training_overrides

from veco2.errors import Veco2Error

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Error:
    parts: tuple[str, ...]

    def __init__(self, *parts: str):
        self.parts = parts


@dataclass
class Skip:
    check: Callable[[Path, str], None]


@dataclass
class Read:
    check: Callable[[Path], None]


# ----------------------------------------------------------------------------------------------
# Inputs


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _put(path: Path, lines: list[str] | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


@pytest.fixture(scope="module")
def xtreme_root(tmp_path_factory) -> Path:
    from test_xtreme_data import write_tiny_layout

    return write_tiny_layout(tmp_path_factory.mktemp("xtreme-clean"), n_copies=2)


@pytest.fixture(scope="module")
def pretrain_run(en_de_corpus, tiny_tokenizer_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """A pre-training run stopped after its step-4 checkpoint, and the overrides that made it."""
    from veco2.config import load_config
    from veco2.trainer import pretrain

    out = tmp_path_factory.mktemp("pretrain-run")
    overrides = tiny_training_overrides(en_de_corpus, **{"data.tokenizer": tiny_tokenizer_dir,
                                                         "data.shard_dir": out / "shards"})
    pretrain(load_config(ROOT / "ablations" / "mlm.yaml", overrides=overrides), out / "run", stop_after=4)
    return out, overrides


class Env:
    """What a case's ``setup`` gets: the temporary directory and clean inputs to copy and break."""

    def __init__(self, tmp: Path, corpus: Path, xtreme: Path, tokenizer: Path, pretrained: Path, pretrain_run):
        self.tmp, self._corpus, self._xtreme, self.tokenizer, self._pretrained = tmp, corpus, xtreme, tokenizer, pretrained
        self._pretrain_run = pretrain_run

    def corpus(self) -> Path:
        root = self.tmp / "corpus"
        if not root.exists():
            shutil.copytree(self._corpus, root)
        return root

    def xtreme(self) -> Path:
        root = self.tmp / "xtreme"
        if not root.exists():
            shutil.copytree(self._xtreme, root)
        return root

    def pretrained(self) -> Path:
        root = self.tmp / "pretrained"
        if not root.exists():
            shutil.copytree(self._pretrained, root)
        return root

    def checkpoint_run(self) -> tuple[Path, Path, list[str]]:
        """A copy of the stopped pre-training run: (out dir, its step-4 checkpoint, overrides)."""
        source, overrides = self._pretrain_run
        shutil.copytree(source, self.tmp / "pre", dirs_exist_ok=True)
        overrides = [o.replace(str(source), str(self.tmp / "pre")) for o in overrides]
        out = self.tmp / "pre" / "run"
        return out, out / "checkpoints" / "step-000000004", overrides

    def prepare(self, *extra: str) -> list[str]:
        """``veco2 data prepare`` on the (broken) corpus copy with the tiny tokenizer."""
        return ["data", "prepare", "--out", str(self.tmp / "prepared"), f"data.corpus={self.corpus()}",
                f"data.tokenizer={self.tokenizer}", "data.max_length=48", *extra]

    def finetune(self, *extra: str, task: str = "xnli", languages=("en", "de")) -> list[str]:
        return ["finetune", "--task", task, "--model", str(self.pretrained()), "--out", str(self.tmp / "ft"),
                "--seeds", "1", "--data-root", str(self.xtreme()), "--max-steps", "1", "batch_size=4", *extra,
                "--languages", *languages]


def _manifest(tmp: Path) -> dict:
    return json.loads((tmp / "prepared" / "shards" / "manifest.json").read_text())


def _skipped(tmp: Path, reason: str) -> int:
    return sum(counts.get(reason, 0) for counts in _manifest(tmp)["skipped"].values())


# ----------------------------------------------------------------------------------------------
# The cases: (id, setup(env) -> argv, expected)


def _edit(path: Path, line: int, text: str | bytes) -> None:
    """Replace 1-based ``line`` of ``path`` with ``text`` (bytes for broken encodings)."""
    raw = path.read_bytes().split(b"\n")
    raw[line - 1] = text if isinstance(text, bytes) else text.encode("utf-8")
    path.write_bytes(b"\n".join(raw))


def _insert(path: Path, line: int, texts: list[str]) -> None:
    lines = _lines(path)
    _put(path, lines[:line - 1] + texts + lines[line - 1:])


def case_empty_mono(env):
    _put(env.corpus() / "mono" / "de.txt", b"")
    return env.prepare()


def case_empty_parallel(env):
    _put(env.corpus() / "parallel" / "train" / "en-de.tsv", b"")
    return env.prepare()


def case_only_blank_lines(env):
    _put(env.corpus() / "mono" / "de.txt", b"\n  \n\t\n")
    return env.prepare()


def case_parallel_three_columns(env):
    _edit(env.corpus() / "parallel" / "train" / "en-de.tsv", 5, "one\ttwo\tthree")
    return env.prepare()


def case_parallel_no_tab(env):
    _edit(env.corpus() / "parallel" / "train" / "en-de.tsv", 7, "a line without its translation")
    return env.prepare()


def case_invalid_utf8_mono(env):
    _edit(env.corpus() / "mono" / "de.txt", 3, b"Stra\xdfe ohne UTF-8")  # Latin-1 sharp s
    return env.prepare()


def case_invalid_utf8_parallel(env):
    _edit(env.corpus() / "parallel" / "train" / "en-de.tsv", 4, b"a street\tStra\xdfe")
    return env.prepare()


def case_nul_byte(env):
    _edit(env.corpus() / "mono" / "en.txt", 2, b"binary\x00garbage")
    return env.prepare()


def case_truncated_gzip(env):
    path = env.corpus() / "mono" / "de.txt"
    blob = gzip.compress(path.read_bytes())
    path.unlink()
    _put(path.with_name("de.txt.gz"), blob[: len(blob) // 2])
    return env.prepare()


def case_dictionary_malformed_line(env):
    _edit(env.corpus() / "dict" / "en-de.tsv", 3, "house Haus")  # a space, not a tab
    return env.prepare()


def case_dictionary_unknown_script(env):
    _put(env.corpus() / "dict" / "en-de.tsv", ["\ue000\ue001\t\ue002", "\ue010\t\ue011\ue012"])  # private use only
    return env.prepare()


def case_unknown_corpus_language(env):
    return env.prepare("data.languages=[de, xx]")


def case_config_unknown_key(env):
    return env.prepare("training.batch_sise=8")


def case_config_wrong_type(env):
    return env.prepare("training.batch_size=many")


def case_config_negative_size(env):
    return env.prepare("data.max_length=-5")


def case_config_file_unknown_key(env):
    _put(env.tmp / "variant.yaml", ["name: v", "training:", "  lr: 0.001", "  warmup: 10"])
    return ["pretrain", "--config", str(env.tmp / "variant.yaml"), "--out", str(env.tmp / "out")]


def case_config_file_wrong_type(env):
    _put(env.tmp / "variant.yaml", ["name: v", "model:", "  dropout: 0.1", "  num_layers: two"])
    return ["pretrain", "--config", str(env.tmp / "variant.yaml"), "--out", str(env.tmp / "out")]


def case_config_file_negative_size(env):
    _put(env.tmp / "variant.yaml", ["training:", "  batch_size: -32"])
    return ["pretrain", "--config", str(env.tmp / "variant.yaml"), "--out", str(env.tmp / "out")]


def case_config_file_invalid_yaml(env):
    _put(env.tmp / "variant.yaml", ["training:", "  lr: [0.1", "model: {}"])
    return ["pretrain", "--config", str(env.tmp / "variant.yaml"), "--out", str(env.tmp / "out")]


def case_vocab_size_below_specials(env):
    return ["data", "prepare", "--out", str(env.tmp / "prepared"), f"data.corpus={env.corpus()}",
            "data.vocab_size=3"]


def case_vocab_size_below_alphabet(env):
    return ["data", "prepare", "--out", str(env.tmp / "prepared"), f"data.corpus={env.corpus()}",
            "data.vocab_size=40"]


def case_unknown_task(env):
    return env.finetune(task="xnlj")


def case_unknown_task_language(env):
    return env.finetune(languages=("de", "tlh"))


def case_missing_dataset_offline(env):
    (env.tmp / "empty-root").mkdir()
    return ["finetune", "--task", "xnli", "--model", str(env.pretrained()), "--out", str(env.tmp / "ft"),
            "--data-root", str(env.tmp / "empty-root"), "--languages", "de"]


def case_task_file_wrong_fields(env):
    _edit(env.xtreme() / "xnli" / "train-en.tsv", 3, "premise only")
    return env.finetune(task="xnli")


def case_task_file_unknown_label(env):
    _edit(env.xtreme() / "xnli" / "train-en.tsv", 2, "A fox.\tA fox.\tmaybe")
    return env.finetune(task="xnli")


def case_task_corrupt_json(env):
    path = env.xtreme() / "squad" / "train-v1.1.json"
    path.write_text(path.read_text()[:-40])  # a download cut short
    return env.finetune(task="xquad", languages=("en",))


def case_tagging_file_malformed(env):
    _edit(env.xtreme() / "udpos" / "train-en.tsv", 2, "quick\tADJ\textra")
    return env.finetune(task="udpos", languages=("en",))


def case_download_hash_mismatch(env):
    from veco2.xtreme.prefetch import write_manifest

    write_manifest(env.xtreme())
    _edit(env.xtreme() / "xnli" / "test-de.tsv", 1, "Der Hund schläft.\tDer Fuchs springt.\tentailment")
    return env.finetune(task="xnli")


def case_unknown_finetune_setting(env):
    return env.finetune("learning_rat=3e-5")


def case_bad_retrieval_layer(env):
    return ["evaluate", "--task", "tatoeba", "--model", str(env.pretrained()), "--out", str(env.tmp / "ev"),
            "--layer", "last"]


def case_model_weights_truncated(env):
    weights = env.pretrained() / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return env.finetune()


def case_model_dir_without_config(env):
    (env.pretrained() / "config.json").unlink()
    return env.finetune()


def case_finetune_checkpoint_truncated(env):
    argv = env.finetune(task="xnli")
    seed_dir = env.tmp / "ft" / "xnli" / "seed1"
    seed_dir.mkdir(parents=True)
    (seed_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 a zip cut short")
    return argv


def case_pretrain_checkpoint_other_architecture(env):
    out, _, overrides = env.checkpoint_run()
    return ["pretrain", "--config", str(ROOT / "ablations" / "mlm.yaml"), "--out", str(out), *overrides,
            "model.hidden_size=48", "model.intermediate_size=96"]


def case_pretrain_checkpoint_truncated(env):
    out, checkpoint, overrides = env.checkpoint_run()
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    return ["pretrain", "--config", str(ROOT / "ablations" / "mlm.yaml"), "--out", str(out), *overrides]


def case_pretrain_optimizer_state_truncated(env):
    out, checkpoint, overrides = env.checkpoint_run()
    state = checkpoint / "optimizer.pt"
    state.write_bytes(state.read_bytes()[:300])
    return ["pretrain", "--config", str(ROOT / "ablations" / "mlm.yaml"), "--out", str(out), *overrides]


def case_pretrain_trainer_state_corrupt(env):
    out, checkpoint, overrides = env.checkpoint_run()
    (checkpoint / "trainer_state.json").write_text('{"step": 4,\n  "tokens": ')
    return ["pretrain", "--config", str(ROOT / "ablations" / "mlm.yaml"), "--out", str(out), *overrides]


def _results_tree(env, text: str) -> list[str]:
    seed_dir = env.tmp / "results" / "xtreme" / "mlm" / "xnli" / "seed1"
    seed_dir.mkdir(parents=True)
    (seed_dir / "results.json").write_text(text)
    return ["report", str(env.tmp / "results"), "--out", str(env.tmp / "report")]


def case_results_corrupt_json(env):
    return _results_tree(env, '{"task": "xnli",\n "seed": 1,\n "scores": {"de": {"accuracy": 71.')


def case_results_not_finite(env):
    return _results_tree(env, json.dumps({"task": "xnli", "languages": ["de"], "seed": 1,
                                          "scores": {"de": {"accuracy": float("nan")}}}))


def case_moses_line_counts_differ(env):
    from veco2.data.readers import read_parallel_moses

    _put(env.tmp / "corpus.en", ["one", "two", "three"])
    _put(env.tmp / "corpus.de", ["eins", "zwei"])
    return lambda: list(read_parallel_moses(env.tmp / "corpus.en", env.tmp / "corpus.de"))


def case_freedict_malformed_xml(env):
    from veco2.data.readers import read_freedict_tei

    _put(env.tmp / "eng-deu.tei", ["<TEI>", "<entry><form><orth>house</orth></form>", "<cit type='trans'>",
                                   "<quote>Haus</quote></entry>", "</TEI>"])
    return lambda: list(read_freedict_tei(env.tmp / "eng-deu.tei"))


def case_corpus_file_is_a_directory(env):
    path = env.corpus() / "mono" / "de.txt"
    path.unlink()
    path.mkdir()
    return env.prepare()


def case_corpus_file_symlink_loop(env):
    path = env.corpus() / "mono" / "de.txt"
    path.unlink()
    path.symlink_to("de.txt")  # points at itself
    return env.prepare()


def case_gzip_named_tsv(env):
    path = env.corpus() / "parallel" / "train" / "en-de.tsv"
    path.write_bytes(gzip.compress(path.read_bytes()))
    return env.prepare()


def _to_jsonl(env) -> Path:
    tsv = env.corpus() / "parallel" / "train" / "en-de.tsv"
    jsonl = tsv.with_suffix(".jsonl")
    _put(jsonl, [json.dumps(dict(zip(("en", "de"), line.split("\t"))), ensure_ascii=False) for line in _lines(tsv)])
    tsv.unlink()
    return jsonl


def case_jsonl_corrupt_line(env):
    _edit(_to_jsonl(env), 3, '{"en": "Open the file", "de": "Datei')
    return env.prepare()


def case_jsonl_missing_field(env):
    _edit(_to_jsonl(env), 2, '{"en": "Open the file", "fr": "Ouvrir le fichier"}')
    return env.prepare()


def case_two_files_for_one_part(env):
    _put(env.corpus() / "parallel" / "train" / "en-de.jsonl", ['{"en": "a", "de": "b"}'])
    return env.prepare()


# Counted skips and awkward-but-valid encodings


def case_empty_sentences(env):
    _insert(env.corpus() / "mono" / "de.txt", 4, ["", "   ", ""])
    return env.prepare()


def _check_empty_sentences(tmp, log):
    assert _skipped(tmp, "empty line") == 3
    assert "empty line: 3 (lines 4, 5, 6)" in log


def case_empty_side(env):
    _insert(env.corpus() / "parallel" / "train" / "en-de.tsv", 2, ["Save the file.\t ", "\tDatei speichern."])
    return env.prepare()


def _check_empty_side(tmp, log):
    assert _skipped(tmp, "empty side") == 2
    assert "empty side: 2 (lines 2, 3)" in log


def case_line_longer_than_max_length(env):
    _insert(env.corpus() / "mono" / "de.txt", 1, [" ".join(["Dokument"] * 400)])
    return env.prepare("data.max_length=512")


def _check_long_line(tmp, log):
    assert _manifest(tmp)["mono"]["de"]["truncated"] == 1
    assert "cut to data.max_length=512 tokens: de 1" in log


def case_dictionary_some_unknown_script(env):
    _insert(env.corpus() / "dict" / "en-de.tsv", 1, ["\ue000\t\ue001", "house\t\ue002"])
    return env.prepare()


def _check_dictionary_skips(tmp, log):
    assert "skipped 2 of 302 entries without a word on one side" in log


def case_header_line(env):
    _insert(env.corpus() / "parallel" / "train" / "en-de.tsv", 1, ["en\tde"])
    return env.prepare()


def _check_header_line(tmp, log):
    assert _skipped(tmp, "header line") == 1
    assert "header line: 1 (lines 1)" in log


def case_untranslated_copies(env):
    _insert(env.corpus() / "parallel" / "train" / "en-de.tsv", 3, ["LibreOffice\tLibreOffice", "Save\t Save "])
    return env.prepare()


def _check_untranslated(tmp, log):
    assert _skipped(tmp, "target equals source (untranslated)") == 2
    assert "target equals source (untranslated): 2 (lines 3, 4)" in log
    assert _manifest(tmp)["bi"]["de"]["pairs"] == 80


def case_zero_width_only_fields(env):
    _insert(env.corpus() / "parallel" / "train" / "en-de.tsv", 5, ["\u200b\tDatei", "Save\t\u200d\u2060"])
    _insert(env.corpus() / "mono" / "de.txt", 2, ["\u200b \ufeff"])
    return env.prepare()


def _check_zero_width(tmp, log):
    assert _skipped(tmp, "side of invisible characters only") == 2
    assert _skipped(tmp, "invisible characters only") == 1
    assert "side of invisible characters only: 2 (lines 5, 6)" in log
    assert "invisible characters only: 1 (lines 2)" in log


def case_dictionary_duplicate_entries(env):
    # "The<TAB>Das" repeats line 1 ("the<TAB>das") after case folding; "the<TAB>der" repeats line 2
    _insert(env.corpus() / "dict" / "en-de.tsv", 5, ["The\tDas", "the\tder"])
    return env.prepare()


def _check_dictionary_duplicates(tmp, log):
    assert _manifest(tmp)["bi"]["de"]["dictionary_duplicate_entries"] == 2
    assert "merged 2 of 302 entries that repeat an earlier entry" in log


def case_bom(env):
    path = env.corpus() / "mono" / "de.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    return env.prepare()


def _check_bom(tmp):
    from veco2.data.corpus import Corpus

    first = Corpus(tmp / "corpus").monolingual("de")[0]
    assert not first.startswith("\ufeff") and first == _lines(tmp / "corpus" / "mono" / "de.txt")[0][1:]


def case_crlf(env):
    path = env.corpus() / "parallel" / "train" / "en-de.tsv"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    return env.prepare()


def _check_crlf(tmp):
    from veco2.data.corpus import Corpus

    pairs = Corpus(tmp / "corpus").parallel("de")
    assert len(pairs) == 80 and not any("\r" in src + tgt for src, tgt in pairs)


CASES = [
    ("empty mono file", case_empty_mono, Error("mono/de.txt: empty file")),
    ("empty parallel file", case_empty_parallel, Error("parallel/train/en-de.tsv: empty file")),
    ("only blank lines", case_only_blank_lines, Error("mono/de.txt: no usable line among 3 (empty line: 3)")),
    ("parallel 3 columns", case_parallel_three_columns, Error("en-de.tsv:5: expected 2 tab-separated columns")),
    ("parallel 1 column", case_parallel_no_tab, Error("en-de.tsv:7: expected 2 tab-separated columns", "found 1")),
    ("invalid UTF-8 mono", case_invalid_utf8_mono, Error("mono/de.txt:3: invalid UTF-8")),
    ("invalid UTF-8 parallel", case_invalid_utf8_parallel, Error("train/en-de.tsv:4: invalid UTF-8")),
    ("NUL byte", case_nul_byte, Error("mono/en.txt:2: NUL byte")),
    ("truncated gzip", case_truncated_gzip, Error("mono/de.txt.gz:", "corrupt compressed file")),
    ("dictionary malformed line", case_dictionary_malformed_line,
     Error("dict/en-de.tsv:3: expected 'source<TAB>target'")),
    ("dictionary unknown script", case_dictionary_unknown_script,
     Error("dict/en-de.tsv: none of the 2 entries has a word", "unknown script")),
    ("unknown corpus language", case_unknown_corpus_language, Error("data.languages: xx not in corpus")),
    ("config unknown key", case_config_unknown_key, Error("unknown key 'training.batch_sise'")),
    ("config wrong type", case_config_wrong_type, Error("training.batch_size: got 'many', expected int")),
    ("config negative size", case_config_negative_size, Error("data.max_length: got -5, must be > 0")),
    ("config file unknown key", case_config_file_unknown_key,
     Error("variant.yaml: unknown key 'training.warmup' (line 4)")),
    ("config file wrong type", case_config_file_wrong_type,
     Error("variant.yaml:4: model.num_layers: got 'two', expected int")),
    ("config file negative size", case_config_file_negative_size,
     Error("variant.yaml:2: training.batch_size: got -32, must be > 0")),
    ("config file invalid YAML", case_config_file_invalid_yaml, Error("variant.yaml:3: invalid YAML")),
    ("vocab below special tokens", case_vocab_size_below_specials, Error("data.vocab_size: got 3, must be >= 6")),
    ("vocab below alphabet", case_vocab_size_below_alphabet,
     Error("data.vocab_size: got 40, too small for the", "raise data.vocab_size")),
    ("unknown task", case_unknown_task, Error("unknown XTREME task 'xnlj'")),
    ("unknown task language", case_unknown_task_language, Error("task 'xnli' has no language 'tlh'")),
    ("missing dataset offline", case_missing_dataset_offline,
     Error("empty-root/xnli/train-en.tsv does not exist", "`veco2 prefetch --tasks xnli --out DIR`")),
    ("task file wrong fields", case_task_file_wrong_fields,
     Error("xnli/train-en.tsv:3: expected 'text_a<TAB>text_b<TAB>label', got 1 field(s)")),
    ("task file unknown label", case_task_file_unknown_label, Error("xnli/train-en.tsv:2: label 'maybe' is not one of")),
    ("task corrupt JSON", case_task_corrupt_json, Error("squad/train-v1.1.json:", "corrupt JSON")),
    ("tagging file malformed", case_tagging_file_malformed, Error("udpos/train-en.tsv:2: expected 'word<TAB>tag'")),
    ("download hash mismatch", case_download_hash_mismatch,
     Error("xnli/test-de.tsv: sha256", "does not match", "`veco2 prefetch`")),
    ("unknown fine-tuning setting", case_unknown_finetune_setting, Error("unknown fine-tuning setting 'learning_rat'")),
    ("bad retrieval layer", case_bad_retrieval_layer, Error("--layer expects an integer or 'all', got 'last'")),
    ("model weights truncated", case_model_weights_truncated,
     Error("pretrained/model.safetensors: cannot load the model weights (SafetensorError: ")),
    ("model dir without config", case_model_dir_without_config, Error("pretrained", "config.json")),
    ("fine-tuning checkpoint truncated", case_finetune_checkpoint_truncated,
     Error("seed1/checkpoint.pt: unreadable fine-tuning checkpoint", "delete it")),
    ("checkpoint of another architecture", case_pretrain_checkpoint_other_architecture,
     Error("step-000000004/model.safetensors: checkpoint of another architecture", "size mismatch")),
    ("truncated checkpoint weights", case_pretrain_checkpoint_truncated,
     Error("step-000000004: unreadable checkpoint", "delete it")),
    ("truncated optimizer state", case_pretrain_optimizer_state_truncated,
     Error("step-000000004: unreadable checkpoint", "delete it")),
    ("corrupt trainer state", case_pretrain_trainer_state_corrupt,
     Error("step-000000004/trainer_state.json:2: corrupt JSON")),
    ("results tree corrupt JSON", case_results_corrupt_json, Error("seed1/results.json:3: corrupt JSON")),
    ("results tree NaN score", case_results_not_finite,
     Error("seed1/results.json: scores['de']['accuracy'] = nan is not a finite number")),
    ("Moses line counts differ", case_moses_line_counts_differ,
     Error("corpus.en: line count 3 differs from", "corpus.de (2 lines)")),
    ("FreeDict malformed XML", case_freedict_malformed_xml, Error("eng-deu.tei:4: malformed TEI XML")),
    ("corpus file is a directory", case_corpus_file_is_a_directory,
     Error("mono/de.txt: is a directory, expected a file")),
    ("corpus file is a symlink loop", case_corpus_file_symlink_loop, Error("mono/de.txt: symbolic link loop")),
    ("gzip data named .tsv", case_gzip_named_tsv,
     Error("train/en-de.tsv: gzip-compressed data in a file without the .gz suffix", "en-de.tsv.gz")),
    ("JSONL corrupt line", case_jsonl_corrupt_line, Error("train/en-de.jsonl:3: corrupt JSON line")),
    ("JSONL missing field", case_jsonl_missing_field, Error("train/en-de.jsonl:2: no field 'de'", "'fr'")),
    ("two files for one corpus part", case_two_files_for_one_part,
     Error("parallel/train: 2 files for en-de (en-de.tsv, en-de.jsonl); keep one")),
    ("empty sentences", case_empty_sentences, Skip(_check_empty_sentences)),
    ("parallel empty side", case_empty_side, Skip(_check_empty_side)),
    ("line longer than max length", case_line_longer_than_max_length, Skip(_check_long_line)),
    ("dictionary entries in unknown script", case_dictionary_some_unknown_script, Skip(_check_dictionary_skips)),
    ("header line", case_header_line, Skip(_check_header_line)),
    ("untranslated copies", case_untranslated_copies, Skip(_check_untranslated)),
    ("zero-width-only fields", case_zero_width_only_fields, Skip(_check_zero_width)),
    ("dictionary duplicate entries", case_dictionary_duplicate_entries, Skip(_check_dictionary_duplicates)),
    ("BOM", case_bom, Read(_check_bom)),
    ("CRLF", case_crlf, Read(_check_crlf)),
]


def test_the_table_has_at_least_30_cases():
    assert len(CASES) >= 30 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name,setup,expected", CASES, ids=[name for name, _, _ in CASES])
def test_bad_input(name, setup, expected, tmp_path, en_de_corpus, xtreme_root, tiny_tokenizer_dir,
                   tiny_pretrained_dir, request, capsys, caplog):
    from veco2 import cli

    needs_run = "pretrain_checkpoint" in setup.__name__ or "optimizer_state" in setup.__name__ \
        or "trainer_state" in setup.__name__
    run = request.getfixturevalue("pretrain_run") if needs_run else None
    env = Env(tmp_path, en_de_corpus, xtreme_root, tiny_tokenizer_dir, tiny_pretrained_dir, run)
    argv = setup(env)
    caplog.set_level(logging.INFO)
    capsys.readouterr()
    if callable(argv):  # a reader without a command of its own
        with pytest.raises(Veco2Error) as err:
            argv()
        status, stderr = 2, f"veco2: error: {err.value}\n"
    else:
        status, stderr = cli.main(argv), capsys.readouterr().err
    if isinstance(expected, Error):
        # progress bars of the libraries may share stderr; the error is one line, the last
        lines = [line for line in stderr.strip().splitlines() if line.startswith("veco2: error: ")]
        assert status != 0, stderr
        assert len(lines) == 1 and stderr.strip().splitlines()[-1] == lines[0], stderr
        assert "Traceback" not in stderr
        for part in expected.parts:
            assert part in lines[0], (part, lines[0])
    elif isinstance(expected, Skip):
        assert status == 0, stderr
        expected.check(tmp_path, caplog.text)
    else:
        assert status == 0, stderr
        expected.check(tmp_path)


def test_a_user_error_in_a_subprocess_is_one_line_and_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "mono"
    argv = [sys.executable, "-m", "veco2.cli", "pretrain", "--out", str(tmp_path / "out"), "training.batch_size=-1"]
    plain = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == ["veco2: error: override 'training.batch_size=-1': "
                                                 "training.batch_size: got -1, must be > 0"]
    debug = subprocess.run([argv[0], *argv[1:3], "--debug", *argv[3:]], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
    assert not bad.exists()

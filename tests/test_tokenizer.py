"""Unigram tokenizer in the XLM-R layout: special ids, pair template, determinism, offline reload."""

import json

import pytest
from transformers import AutoTokenizer

from veco2.data.tokenizer import load_tokenizer, train_unigram_tokenizer
from veco2.errors import Veco2Error

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
]
CORPUS = [f"{sentence} {n}" for n in range(40) for sentence in SENTENCES]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    tokenizer = train_unigram_tokenizer(CORPUS, vocab_size=300, out_dir=out)
    return out, tokenizer


def test_reloads_with_plain_transformers_and_keeps_xlmr_special_ids(trained):
    out, tokenizer = trained
    reloaded = AutoTokenizer.from_pretrained(str(out))  # no veco2 code involved
    assert reloaded.is_fast
    size = len(reloaded)
    assert size == len(tokenizer) and 50 < size <= 300
    assert (reloaded.bos_token_id, reloaded.pad_token_id, reloaded.eos_token_id, reloaded.unk_token_id) == (0, 1, 2, 3)
    assert reloaded.mask_token_id == size - 1
    assert reloaded.convert_ids_to_tokens([0, 1, 2, 3, size - 1]) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert reloaded.cls_token == "<s>" and reloaded.sep_token == "</s>"
    text = "Der faule Hund springt."
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_single_and_pair_templates(trained):
    out, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    a = tokenizer("the lazy dog", add_special_tokens=False)["input_ids"]
    b = tokenizer("den faulen Hund", add_special_tokens=False)["input_ids"]
    assert tokenizer("the lazy dog")["input_ids"] == [0, *a, 2]
    assert tokenizer("the lazy dog", "den faulen Hund")["input_ids"] == [0, *a, 2, 2, *b, 2]
    assert tokenizer.decode(tokenizer("the lazy dog")["input_ids"], skip_special_tokens=True).strip() == "the lazy dog"
    # the mask token is one piece inside text
    assert tokenizer.mask_token_id in tokenizer("the <mask> dog")["input_ids"]


def test_metaspace_and_nfkc(trained):
    _, tokenizer = trained
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("the dog", add_special_tokens=False)["input_ids"])
    assert tokens[0].startswith("▁")  # a space is prepended, XLM-R style
    # NFKC: full-width letters tokenize as their compatibility forms
    assert tokenizer("ｄｏｇ")["input_ids"] == tokenizer("dog")["input_ids"]


def test_retraining_gives_the_same_pieces_and_ids(trained, tmp_path):
    out, _ = trained
    first = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    for run in range(2):  # the trainer's tie order is per run, so one retraining could pass by luck
        train_unigram_tokenizer(list(CORPUS), vocab_size=300, out_dir=tmp_path / str(run))
        again = json.loads((tmp_path / str(run) / "tokenizer.json").read_text())["model"]["vocab"]
        assert [piece for piece, _ in again] == [piece for piece, _ in first]
        # scores may move by ~1e-4 where the trainer breaks count ties in hash order (documented)
        assert max(abs(a[1] - b[1]) for a, b in zip(again, first)) < 1e-2
    pieces = [piece for piece, _ in first[4:]]
    assert pieces == sorted(pieces)


def test_load_tokenizer(trained, tmp_path):
    out, tokenizer = trained
    loaded = load_tokenizer(out)
    assert loaded("Быстрая лиса")["input_ids"] == tokenizer("Быстрая лиса")["input_ids"]
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(Veco2Error, match="not a file"):
        load_tokenizer(tmp_path / "file.json")
    with pytest.raises(Veco2Error, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "missing-dir"))


def test_rejects_empty_corpus_and_tiny_vocab():
    with pytest.raises(ValueError, match="no non-empty"):
        train_unigram_tokenizer(["", ""], vocab_size=100)
    with pytest.raises(ValueError, match="no room"):
        train_unigram_tokenizer(["abc"], vocab_size=5)

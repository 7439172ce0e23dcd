"""Shared test fixtures.  Tests never touch the network: the hub is switched off before any
Hugging Face library is imported."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# A few hundred real sentences in several scripts for tiny tokenizers/models in tests.
TEST_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "Open the document and save the file.",
    "Öffnen Sie das Dokument und speichern Sie die Datei.",
    "Ouvrez le document et enregistrez le fichier.",
    "Abra el documento y guarde el archivo.",
    "Откройте документ и сохраните файл.",
    "打开文档并保存文件。",
    "افتح المستند واحفظ الملف.",
    "दस्तावेज़ खोलें और फ़ाइल सहेजें।",
]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A small Unigram tokenizer trained on TEST_SENTENCES, saved in Hugging Face format."""
    from veco2.data.tokenizer import train_unigram_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_unigram_tokenizer(TEST_SENTENCES * 4, vocab_size=300, out_dir=out)
    return out


@pytest.fixture(scope="session")
def tiny_pretrained_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A randomly initialised tiny XLM-R encoder + tokenizer saved like a veco2 pre-training output."""
    import torch
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
                              pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("pretrained")
    XLMRobertaModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def small_corpus_dir(tmp_path_factory) -> Path:
    """A slice of the embedded demo corpus (de, zh; a few hundred pairs) in the corpus layout."""
    import gzip

    from veco2.data.corpus import DEMO_DIR

    out = tmp_path_factory.mktemp("corpus")
    sizes = {"parallel/train": 400, "parallel/dev": 60, "parallel/test": 60}
    for lang in ("de", "zh"):
        for folder, size in sizes.items():
            lines = gzip.open(DEMO_DIR / folder / f"en-{lang}.tsv.gz", "rt", encoding="utf-8").read().splitlines()
            (out / folder).mkdir(parents=True, exist_ok=True)
            (out / folder / f"en-{lang}.tsv").write_text("\n".join(lines[:size]) + "\n", encoding="utf-8")
        train = (out / "parallel/train" / f"en-{lang}.tsv").read_text(encoding="utf-8").splitlines()
        (out / "mono").mkdir(exist_ok=True)
        (out / "mono" / f"{lang}.txt").write_text("\n".join(l.split("\t")[1] for l in train) + "\n", encoding="utf-8")
        (out / "dict").mkdir(exist_ok=True)
        (out / "dict" / f"en-{lang}.tsv").write_bytes(gzip.open(DEMO_DIR / "dict" / f"en-{lang}.tsv.gz").read())
    english = sorted({l.split("\t")[0] for lang in ("de", "zh")
                      for l in (out / "parallel/train" / f"en-{lang}.tsv").read_text(encoding="utf-8").splitlines()})
    (out / "mono" / "en.txt").write_text("\n".join(english) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def en_de_corpus(small_corpus_dir, tmp_path_factory) -> Path:
    """en-de only, 80 training pairs, 300 dictionary entries: small enough for a shard build in a
    fraction of a second (the bad-input tests copy and break it)."""
    out = tmp_path_factory.mktemp("en-de-corpus")
    for name, size in (("parallel/train/en-de.tsv", 80), ("parallel/dev/en-de.tsv", 20), ("parallel/test/en-de.tsv", 20),
                       ("mono/en.txt", 80), ("mono/de.txt", 80), ("dict/en-de.tsv", 300)):
        lines = (small_corpus_dir / name).read_text(encoding="utf-8").splitlines()[:size]
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return out


def tiny_training_overrides(corpus: Path, **extra) -> list[str]:
    """A model and run small enough for a few seconds of CPU per test."""
    base = {
        "data.corpus": str(corpus), "data.vocab_size": 1500, "data.max_length": 48,
        "model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 2, "model.intermediate_size": 64,
        "training.batch_size": 16, "training.max_steps": 12, "training.warmup_steps": 2,
        "training.checkpoint_every": 4, "training.log_every": 2, "training.tensorboard": False,
        "evaluation.heldout_pairs": 50,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]

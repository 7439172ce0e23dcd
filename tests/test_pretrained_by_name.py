"""Models by Hugging Face hub name: resolved from a real hub cache, offline, end to end through the CLI.

The cache is built in a temporary directory (:mod:`hf_cache`) from the tiny test model, and
huggingface_hub is pointed at it with ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1``; nothing is mocked
between the name and ``from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hf_cache import cache_snapshot, use_cache

from veco2.cli import main
from veco2.errors import Veco2Error
from veco2.pretrained import hub_origin, resolve_pretrained
from veco2.provenance import sha256_file

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"
NAME = "veco2-test/tiny-xlmr"


@pytest.fixture
def hub_cache(tiny_pretrained_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    snapshot = cache_snapshot(cache, NAME, tiny_pretrained_dir, COMMIT)
    use_cache(monkeypatch, cache)
    return cache, snapshot


def test_names_resolve_from_the_cache_and_directories_stay_as_they_are(hub_cache, tiny_pretrained_dir):
    cache, snapshot = hub_cache
    assert resolve_pretrained(tiny_pretrained_dir) == tiny_pretrained_dir
    assert hub_origin(tiny_pretrained_dir) is None
    assert resolve_pretrained(NAME) == snapshot
    assert hub_origin(snapshot) == {"name": NAME, "revision": COMMIT}
    # a repository without an organisation, like xlm-roberta-base, and one with only *.bin weights
    from transformers import AutoModel

    bin_source = cache.parent / "bin-only"
    AutoModel.from_pretrained(tiny_pretrained_dir).save_pretrained(bin_source, safe_serialization=False)
    for path in tiny_pretrained_dir.glob("tokenizer*"):
        (bin_source / path.name).write_bytes(path.read_bytes())
    bin_snapshot = cache_snapshot(cache, "tiny-bin", bin_source, "f" * 40)
    assert resolve_pretrained("tiny-bin") == bin_snapshot and hub_origin(bin_snapshot) == {
        "name": "tiny-bin", "revision": "f" * 40}
    assert AutoModel.from_pretrained(resolve_pretrained("tiny-bin")).config.hidden_size == 32


@pytest.mark.parametrize("name,message", [
    ("veco2-test/no-such-model", "veco2-test/no-such-model: neither a local model directory nor a model on the "
                                 "Hugging Face hub or in its cache"),
    ("./no/such/dir", "./no/such/dir: no such model directory"),
    ("not a valid name", "not a valid name: neither a local model directory"),
])
def test_an_unknown_name_is_a_one_line_error(hub_cache, name, message):
    with pytest.raises(Veco2Error) as err:
        resolve_pretrained(name)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_snapshot_without_weights_is_refused(hub_cache, tiny_pretrained_dir):
    cache, _ = hub_cache
    cache_snapshot(cache, "veco2-test/no-weights", tiny_pretrained_dir, "e" * 40, skip=(".safetensors",))
    with pytest.raises(Veco2Error, match=r"veco2-test/no-weights: the hub snapshot .* has no \*\.safetensors or "
                                         r"\*\.bin weights"):
        resolve_pretrained("veco2-test/no-weights")


def test_cli_unknown_model_name_exits_with_one_line(hub_cache, tmp_path, capsys):
    status = main(["finetune", "--task", "pawsx", "--model", "veco2-test/missing", "--out", str(tmp_path / "out"),
                   "--seeds", "1", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("veco2: error: veco2-test/missing: neither")


def test_finetune_and_evaluate_by_hub_name_on_the_demo_data(hub_cache, tmp_path, capsys):
    _, snapshot = hub_cache
    out = tmp_path / "results"
    assert main(["finetune", "--task", "pawsx", "--model", NAME, "--out", str(out), "--seeds", "1",
                 "--languages", "en", "de", "--max-steps", "2", "max_train_examples=16",
                 "batch_size=8", "eval_batch_size=100", "max_seq_length=64"]) == 0
    finetuned = json.loads((out / "pawsx" / "seed1" / "results.json").read_text())
    weights = {"model.safetensors": sha256_file(snapshot / "model.safetensors")}
    assert finetuned["model"] == {"path": str(snapshot), "name": NAME, "revision": COMMIT,
                                  "config_hash": finetuned["model"]["config_hash"], "weights_sha256": weights}
    assert finetuned["data"]["demo"] is True and set(finetuned["scores"]) == {"en", "de"}
    assert finetuned["selection"]["steps"] == 2

    assert main(["evaluate", "--task", "tatoeba", "--model", NAME, "--out", str(out), "--languages", "de",
                 "--batch-size", "32", "--mixed-precision", "bf16"]) == 0
    retrieval = json.loads((out / "tatoeba" / "seed0" / "results.json").read_text())
    assert (retrieval["model"]["name"], retrieval["model"]["revision"]) == (NAME, COMMIT)
    assert retrieval["model"]["weights_sha256"] == weights
    assert retrieval["hyperparameters"]["batch_size"] == 32 and retrieval["hyperparameters"]["mixed_precision"] == "bf16"
    assert 0.0 <= retrieval["scores"]["de"]["accuracy"] <= 100.0


def test_pretraining_starts_from_a_hub_name(small_corpus_dir, tiny_tokenizer_dir, tmp_path, monkeypatch):
    """``model.init_from=ORG/NAME`` (and ``data.tokenizer=ORG/NAME``) load through ``from_pretrained``,
    which resolves the name from the same cache."""
    import torch
    from conftest import tiny_training_overrides
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForMaskedLM

    from veco2.config import load_config
    from veco2.trainer import pretrain

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    source = tmp_path / "mlm"  # hidden size 48, where the tiny training settings say 32
    XLMRobertaForMaskedLM(XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
        max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id)).save_pretrained(source)
    tokenizer.save_pretrained(source)
    cache = tmp_path / "hf-cache"
    cache_snapshot(cache, "veco2-test/tiny-mlm", source, COMMIT)
    use_cache(monkeypatch, cache)
    overrides = tiny_training_overrides(small_corpus_dir, **{
        "model.init_from": "veco2-test/tiny-mlm", "data.tokenizer": "veco2-test/tiny-mlm", "training.max_steps": 2,
        "training.checkpoint_every": 2, "training.log_every": 1})
    summary = pretrain(load_config(str(ROOT / "ablations" / "mlm.yaml"), overrides=overrides), tmp_path / "run")
    assert summary["steps"] == 2 and summary["config"]["model"]["init_from"] == "veco2-test/tiny-mlm"
    # the summary pins the weights: the hub name and the snapshot's commit
    assert summary["init_from"]["name"] == "veco2-test/tiny-mlm" and summary["init_from"]["revision"] == COMMIT
    start = load_file(source / "model.safetensors")["roberta.embeddings.word_embeddings.weight"]
    trained = load_file(tmp_path / "run" / "model" / "model.safetensors")["roberta.embeddings.word_embeddings.weight"]
    # the cached weights were trained on: two small steps away from them
    assert trained.shape == start.shape == (len(tokenizer), 48) and not torch.equal(trained, start)
    assert float((trained - start).abs().max()) < 0.1 * float(start.abs().max())

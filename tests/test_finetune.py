"""Fine-tune / evaluate engine: QA decoding, tagging windows, end-to-end runs on tiny data."""

import json

import numpy as np
import pytest
from test_xtreme_data import write_tiny_layout
from transformers import AutoTokenizer

from veco2.errors import ConfigError, Veco2Error
from veco2.xtreme import aggregate
from veco2.xtreme.retrieval_run import default_layer, run_evaluate
from veco2.xtreme.families import QuestionAnswering, Tagging, best_span
from veco2.xtreme.finetune import FinetuneSettings, parse_overrides, run_finetune
from veco2.xtreme.registry import get_task

FAST = {"max_steps": 3, "batch_size": 4, "eval_steps": 2}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return write_tiny_layout(tmp_path_factory.mktemp("xtreme"), n_copies=2)


# ------------------------------------------------------------------------------ QA decoding

def test_best_span_known_answer_length_limit_and_question_rejected():
    #              0    1    2    3    4    5    6    7
    context = [False, True, True, True, True, True, True, False]  # 0 = <s>/question side, 7 = </s>
    start = np.array([9.0, 1.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    end = np.array([9.0, 0.0, 0.0, 0.0, 4.0, 0.0, 6.0, 8.0])
    # best inside the context with end >= start: start 2, end 6 -> 5 + 6 = 11 (0 and 7 are not context)
    assert best_span(start, end, context, n_best=20, max_answer_length=30) == (11.0, 2, 6)
    # at most 3 tokens: 2..6 is 5 tokens long, the best allowed is 2..4 -> 5 + 4
    assert best_span(start, end, context, n_best=20, max_answer_length=3) == (9.0, 2, 4)
    # the top start/end (position 0, logits 9 + 9) lie in the question: with only the top-1 candidates
    # nothing is valid
    assert best_span(start, end, context, n_best=1, max_answer_length=30) is None
    # end before start is rejected: (4, 2) would score 7 + 8 = 15, the best valid span is (4, 4) = 7 + 2
    start2 = np.array([0.0, 0.0, 0.0, 0.0, 7.0, 0.0, 0.0, 0.0])
    end2 = np.array([0.0, 0.0, 8.0, 0.0, 2.0, 0.0, 0.0, 0.0])
    assert best_span(start2, end2, context, n_best=20, max_answer_length=30) == (9.0, 4, 4)


def test_qa_windows_map_answers_back_to_context(tiny_pretrained_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_pretrained_dir)
    settings = FinetuneSettings(max_seq_length=24, doc_stride=6, max_query_length=8, n_best_size=20,
                                max_answer_length=30)
    qa = QuestionAnswering(get_task("xquad"), tokenizer, settings)
    context = "Open the document and save the file. The quick brown fox jumps over the lazy dog."
    example = {"id": "x", "context": context, "question": "What jumps?",
               "answers": {"text": ["brown fox"], "answer_start": [context.index("brown fox")]}}
    enc = qa._windows(example)
    assert len(enc["input_ids"]) > 1 and all(len(ids) <= 24 for ids in enc["input_ids"])
    features = qa.train_features([example])
    found = []
    for w, feature in enumerate(features):
        if feature["start_positions"]:
            offsets = enc["offset_mapping"][w]
            found.append(context[offsets[feature["start_positions"]][0]:offsets[feature["end_positions"]][1]])
    assert found and all(text.strip() == "brown fox" for text in found)


# ------------------------------------------------------------------------------ tagging windows

def test_long_sentences_are_split_and_mapped_back(tiny_pretrained_dir):
    import torch

    tokenizer = AutoTokenizer.from_pretrained(tiny_pretrained_dir)
    task = get_task("udpos")
    tagger = Tagging(task, tokenizer, FinetuneSettings(max_seq_length=8, eval_batch_size=4))
    words = "The quick brown fox jumps over the lazy dog and saves the file".split()
    example = {"id": "s", "words": words, "tags": ["NOUN"] * len(words)}
    windows = tagger.windows([example])
    assert len(windows) > 1 and windows[0][1] == 0 and windows[-1][2] == len(words)
    features = tagger._features([example], with_labels=True)
    assert all(len(f["input_ids"]) <= 8 for f in features)
    labelled = sum(sum(1 for label in f["labels"] if label != -100) for f in features)
    assert labelled == len(words)  # one label per word, on its first subword

    class FirstSubwordEcho(torch.nn.Module):
        """Predicts tag index (word position mod 17) at every first subword, to check the mapping back."""

        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, len(task.labels))
            for row, feature in enumerate(self.batch):
                for word, position in feature["first_subword"].items():
                    logits[row, position, (feature["word_start"] + word) % len(task.labels)] = 1.0
            return type("Out", (), {"logits": logits})()

    model = FirstSubwordEcho()
    model.batch = tagger._features([example], with_labels=False)
    tagger.settings.eval_batch_size = len(model.batch)
    prediction = tagger.predict(model, [example])[0]
    assert prediction == [task.labels[i % len(task.labels)] for i in range(len(words))]


# ------------------------------------------------------------------------------ end to end

def _read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_classification_end_to_end_deterministic(tiny_pretrained_dir, tiny_root, tmp_path):
    first = run_finetune("xnli", tiny_pretrained_dir, tmp_path / "a", seeds=[1], data_root=tiny_root,
                         overrides=FAST, languages=["en", "de"])[0]
    result = _read(tmp_path / "a" / "xnli" / "seed1" / "results.json")
    assert result["task"] == "xnli" and result["version"] == 1 and result["seed"] == 1
    assert set(result["scores"]) == {"en", "de"} and result["languages"] == ["en", "de"]
    assert result["task_score"] == pytest.approx(
        (result["scores"]["en"]["accuracy"] + result["scores"]["de"]["accuracy"]) / 2)
    assert result["model"]["config_hash"] and "git_commit" in result["provenance"]
    assert result["model"]["name"] is None and result["model"]["revision"] is None  # a local directory
    assert [h["step"] for h in result["selection"]["history"]] == [2, 3]  # eval every 2 steps + last
    lines = (tmp_path / "a" / "xnli" / "seed1" / "predictions" / "xnli" / "test-de.tsv").read_text().splitlines()
    assert len(lines) == 2 and set(lines) <= set(get_task("xnli").labels)
    assert not (tmp_path / "a" / "xnli" / "seed1" / "checkpoint.pt").exists()
    # the results tree is what aggregate reads
    tree = aggregate.load_results_tree(tmp_path)
    assert set(tree["task"]) == {"xnli"}
    # same seed, fresh directory -> identical scores and predictions
    second = run_finetune("xnli", tiny_pretrained_dir, tmp_path / "b", seeds=[1], data_root=tiny_root,
                          overrides=FAST, languages=["en", "de"])[0]
    assert second["scores"] == first["scores"]
    assert second["selection"]["history"] == first["selection"]["history"]


def test_resume_after_kill_gives_the_same_result(tiny_pretrained_dir, tiny_root, tmp_path, monkeypatch):
    from veco2.xtreme import finetune

    settings = dict(seeds=[2], data_root=tiny_root, overrides={**FAST, "max_steps": 4}, languages=["en"])
    reference = run_finetune("xnli", tiny_pretrained_dir, tmp_path / "ref", **settings)[0]
    calls = {"n": 0}
    real_score = finetune._dev_score

    def killed_at_second_eval(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the run dies after the step-2 checkpoint
        return real_score(*args, **kwargs)

    monkeypatch.setattr(finetune, "_dev_score", killed_at_second_eval)
    with pytest.raises(KeyboardInterrupt):
        run_finetune("xnli", tiny_pretrained_dir, tmp_path / "run", **settings)
    assert (tmp_path / "run" / "xnli" / "seed2" / "checkpoint.pt").exists()
    resumed_calls = []

    def counting(*args, **kwargs):
        resumed_calls.append(1)
        return real_score(*args, **kwargs)

    monkeypatch.setattr(finetune, "_dev_score", counting)
    resumed = run_finetune("xnli", tiny_pretrained_dir, tmp_path / "run", **settings)[0]
    assert resumed["scores"] == reference["scores"]
    assert resumed["selection"]["history"] == reference["selection"]["history"]
    assert len(resumed_calls) == 1  # it resumed at step 2 and evaluated only at step 4


def test_tagging_end_to_end(tiny_pretrained_dir, tiny_root, tmp_path):
    result = run_finetune("udpos", tiny_pretrained_dir, tmp_path, seeds=[1], data_root=tiny_root,
                          overrides={**FAST, "max_seq_length": 6}, languages=["en", "de"])[0]
    assert set(result["scores"]["de"]) == {"f1", "token_accuracy"}
    for lang in ("en", "de"):
        assert 0.0 <= result["scores"][lang]["f1"] <= 100.0
    text = (tmp_path / "udpos" / "seed1" / "predictions" / "udpos" / "test-de.tsv").read_text()
    sentences = [s.split("\n") for s in text.strip("\n").split("\n\n")]
    assert [len(s) for s in sentences] == [5]  # every word predicted although max length 6 splits it


def test_qa_end_to_end_xquad_mlqa_and_tydiqa(tiny_pretrained_dir, tiny_root, tmp_path):
    overrides = {**FAST, "max_seq_length": 32, "doc_stride": 8, "max_query_length": 8}
    xquad = run_finetune("xquad", tiny_pretrained_dir, tmp_path, seeds=[1], data_root=tiny_root,
                         overrides=overrides, languages=["en", "de"])[0]
    assert set(xquad["scores"]["de"]) == {"f1", "exact_match"}
    assert xquad["task_score"] == pytest.approx(
        (xquad["task_means"]["f1"] + xquad["task_means"]["exact_match"]) / 2)
    answers = json.loads((tmp_path / "xquad" / "seed1" / "predictions" / "xquad" / "test-de.json").read_text())
    assert set(answers) == {"d0", "d1"} and all(isinstance(a, str) for a in answers.values())
    tydiqa = run_finetune("tydiqa", tiny_pretrained_dir, tmp_path, seeds=[1], data_root=tiny_root,
                          overrides=overrides, languages=["en"])[0]
    assert tydiqa["selection"]["on"].startswith("final") and tydiqa["n_train_examples"] == 2


def test_bad_settings_and_retrieval_task_rejected(tiny_pretrained_dir, tiny_root, tmp_path):
    with pytest.raises(ConfigError, match="unknown fine-tuning setting 'lr'"):
        run_finetune("xnli", tiny_pretrained_dir, tmp_path, seeds=[1], data_root=tiny_root, overrides={"lr": 1})
    with pytest.raises(Veco2Error, match="veco2 evaluate"):
        run_finetune("tatoeba", tiny_pretrained_dir, tmp_path, seeds=[1], data_root=tiny_root)
    with pytest.raises(Veco2Error, match=r"translate_train data for 'de' not found: .*xnli/train-de.tsv"):
        run_finetune("xnli", tiny_pretrained_dir, tmp_path, seeds=[1], data_root=tiny_root, overrides=FAST,
                     languages=["de"], translate_train=True)
    # with translated train data present, it is added to the English training set
    import shutil
    shutil.copytree(tiny_root, tmp_path / "tt")
    shutil.copy(tmp_path / "tt" / "xnli" / "test-de.tsv", tmp_path / "tt" / "xnli" / "train-de.tsv")
    result = run_finetune("xnli", tiny_pretrained_dir, tmp_path / "out", seeds=[1], data_root=tmp_path / "tt",
                          overrides=FAST, languages=["de"], translate_train=True)[0]
    assert result["n_train_examples"] == 8 + 2 and result["data"]["translate_train"] is True
    assert parse_overrides(["learning_rate=3e-5", "eval_steps=100"]) == {"learning_rate": 3e-5, "eval_steps": 100}


def test_missing_data_offline_names_prefetch(tiny_pretrained_dir, tmp_path):
    with pytest.raises(Veco2Error, match="veco2 prefetch --tasks xnli"):
        run_finetune("xnli", tiny_pretrained_dir, tmp_path / "out", seeds=[1], data_root=tmp_path / "empty",
                     languages=["de"])


# ------------------------------------------------------------------------------ retrieval

def test_tatoeba_and_bucc_evaluate_with_layer_sweep(tiny_pretrained_dir, tiny_root, tmp_path):
    import torch
    from transformers import AutoModel

    from veco2.xtreme.retrieval_run import encode

    assert default_layer(12) == 8 and default_layer(24) == 16
    out = tmp_path / "variant"
    result = run_evaluate("tatoeba", tiny_pretrained_dir, out, layers="all", data_root=tiny_root,
                          languages=["de", "fr"])
    assert result["layer"] == 1 and set(result["scores_by_layer"]) == {"0", "1", "2"}
    assert result["scores"] == result["scores_by_layer"]["1"]
    # independent check of one cell: mean pooling by hand over the attention mask, cosine argmax
    model, tokenizer = AutoModel.from_pretrained(tiny_pretrained_dir), AutoTokenizer.from_pretrained(tiny_pretrained_dir)
    from test_xtreme_data import DE, EN, FR
    def by_hand(sentences, layer=2):
        vecs = []
        for s in sentences:
            enc = tokenizer(s, return_tensors="pt")
            with torch.no_grad():
                h = model(**enc, output_hidden_states=True).hidden_states[layer][0]
            vecs.append(torch.nn.functional.normalize(h.mean(0), dim=0).numpy())
        return np.stack(vecs)
    gold = np.arange(len(EN))
    for lang, sentences in (("de", DE), ("fr", FR)):  # fr: the two directions differ (100 vs 50)
        xx, en = by_hand(sentences), by_hand(EN)
        cell = result["scores_by_layer"]["2"][lang]
        assert cell["accuracy"] == pytest.approx(100.0 * np.mean((en @ xx.T).argmax(1) == gold))  # English queries
        assert cell["accuracy_xx_to_en"] == pytest.approx(100.0 * np.mean((xx @ en.T).argmax(1) == gold))
        # predictions (chosen layer 1): line i = the non-English line that English line i retrieved
        retrieved = (by_hand(EN, 1) @ by_hand(sentences, 1).T).argmax(1)
        assert (out / "tatoeba" / "seed0" / "predictions" / "tatoeba" / f"test-{lang}.tsv").read_text() == \
            "".join(f"{i}\n" for i in retrieved)
    assert result["scores_by_layer"]["2"]["fr"]["accuracy"] != result["scores_by_layer"]["2"]["fr"]["accuracy_xx_to_en"]
    src = by_hand(DE)
    vec = encode(DE, model, tokenizer, layers=[2], batch_size=1)[2]
    np.testing.assert_allclose(vec, src, atol=1e-5)

    bucc = run_evaluate("bucc2018", tiny_pretrained_dir, out, layer=2, data_root=tiny_root, languages=["de"])
    assert set(bucc["scores"]["de"]) == {"f1", "precision", "recall"} and bucc["seed"] == 0
    assert "de" in bucc["bucc_thresholds"]
    assert set(aggregate.load_results_tree(tmp_path)["task"]) == {"tatoeba", "bucc2018"}


def test_settings_are_the_engine_defaults_then_the_task_file_then_the_overrides():
    import dataclasses

    from veco2.xtreme.finetune import ENGINE_DEFAULTS, resolve_hyperparameters

    xnli, xquad = get_task("xnli"), get_task("xquad")
    settings = resolve_hyperparameters(xquad, {"doc_stride": 64, "learning_rate": "1e-4"})
    assert (settings.doc_stride, settings.max_query_length, settings.learning_rate) == (64, 64, 1e-4)
    assert settings.warmup_steps == 500 and settings.eval_batch_size == ENGINE_DEFAULTS["eval_batch_size"]
    # results.json records the engine settings and those the task file names: no QA settings for XNLI
    assert list(resolve_hyperparameters(xnli).to_dict()) == [*ENGINE_DEFAULTS, "learning_rate", "num_train_epochs",
                                                            "batch_size", "max_seq_length"]
    with pytest.raises(ConfigError, match="unknown fine-tuning setting 'doc_stride'"):
        resolve_hyperparameters(xnli, {"doc_stride": 64})
    with pytest.raises(ConfigError, match=r"fine-tuning settings: warmup_steps: got 0\.5, expected int"):
        resolve_hyperparameters(xnli, {"warmup_steps": 0.5})
    odd = dataclasses.replace(xnli, hyperparameters={**xnli.hyperparameters, "dropout": 0.2})
    with pytest.raises(ConfigError, match="unknown key 'dropout'"):
        resolve_hyperparameters(odd)


def test_finetune_command_takes_key_value_overrides_like_pretrain(monkeypatch, capsys):
    from veco2 import cli
    from veco2.xtreme import finetune

    calls = []

    def record(task, model, out, **kwargs):
        calls.append(kwargs)
        return [{"task": task, "seed": 1, "task_score": 50.0}]

    monkeypatch.setattr(finetune, "run_finetune", record)
    base = ["finetune", "--task", "xnli", "--model", "m", "--out", "o"]
    assert cli.main([*base, "learning_rate=3e-5", "eval_steps=100", "batch_size=8", "--max-steps", "5",
                     "--languages", "en", "de"]) == 0
    assert calls[-1]["overrides"] == {"batch_size": 8, "learning_rate": 3e-5, "eval_steps": 100, "max_steps": 5}
    assert calls[-1]["languages"] == ["en", "de"]
    with pytest.raises(SystemExit):
        cli.main([*base, "--languages", "en", "de", "batch_size=8"])
    assert "put the overrides before --languages" in capsys.readouterr().err
    assert cli.main([*base, "batch_size"]) == 2
    assert "override 'batch_size': expected KEY=VALUE" in capsys.readouterr().err

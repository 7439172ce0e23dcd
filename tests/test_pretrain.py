"""Pre-training: model, batches, trainer, checkpoints and resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_training_overrides
from safetensors.torch import load_file

from veco2.config import load_config
from veco2.data.batching import SpecialTokens, StepSampler, collate
from veco2.errors import Veco2Error
from veco2.model import Veco2ForPretraining, build_encoder
from veco2.trainer import pretrain, prepare_data

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"


def _config(corpus, variant="mlm_seq_tok", **extra):
    return load_config(f"{ABLATIONS}/{variant}.yaml", overrides=tiny_training_overrides(corpus, **extra))


@pytest.fixture(scope="module")
def prepared(small_corpus_dir, tmp_path_factory):
    cfg = _config(small_corpus_dir)
    out = tmp_path_factory.mktemp("prepared")
    tokenizer, shards = prepare_data(cfg, out)
    return cfg, tokenizer, shards, out


def test_shards_hold_the_corpus_and_mined_spans(prepared):
    cfg, tokenizer, shards, _ = prepared
    assert shards.manifest["languages"] == ["en", "de", "zh"]
    assert shards.num_bi == 800
    assert shards.manifest["bi"]["de"]["pairs"] == 400
    assert shards.manifest["bi"]["de"]["share_with_match"] > 0.3
    # Every stored span points at real subwords of its own side.
    for i in range(shards.num_bi):
        src, tgt, spans = shards.bi(i)
        for s0, s1, t0, t1 in spans:
            assert 0 <= s0 < s1 <= len(src) and 0 <= t0 < t1 <= len(tgt)
    assert max(len(shards.mono(i)) for i in range(shards.num_mono)) <= cfg.data.max_length - 2


def test_sampler_is_a_pure_function_of_step_and_splits_ranks(prepared):
    _, _, shards, _ = prepared
    args = (shards.num_mono, shards.num_bi, shards.mono_lengths(), shards.bi_lengths(), 8, 0.5, 3, True, 4)
    first = StepSampler(*args)
    steps = [first.indices(s) for s in range(10)]
    again = StepSampler(*args)
    for s in (7, 2, 9, 0):  # any order: nothing depends on history
        assert all(np.array_equal(a, b) for a, b in zip(again.indices(s), steps[s]))
    rank0, rank1 = StepSampler(*args, rank=0, world=2), StepSampler(*args, rank=1, world=2)
    mono0, bi0 = rank0.indices(5)
    mono1, bi1 = rank1.indices(5)
    assert len(mono0) == len(mono1) == 4 and len(bi0) == len(bi1) == 4
    assert not set(bi0) & set(bi1)


def test_length_bucketing_cuts_padding(prepared):
    _, _, shards, _ = prepared

    def padding(bucket):
        sampler = StepSampler(shards.num_mono, shards.num_bi, shards.mono_lengths(), shards.bi_lengths(), 16, 0.0,
                              0, bucket, 16)
        lengths = shards.mono_lengths()
        pads = []
        for s in range(32):
            rows = lengths[sampler.indices(s)[0]]
            pads.append(1 - rows.sum() / (rows.max() * len(rows)))
        return float(np.mean(pads))

    assert padding(True) < padding(False) / 2


def test_collate_builds_tlm_rows_and_side_views(prepared, small_corpus_dir):
    _, tokenizer, shards, _ = prepared
    cfg = _config(small_corpus_dir, **{"data.packing": False,  # one row per instance, to read it back
                                       "objectives.seq.encoding": "separate"})  # with the clean pass
    special = SpecialTokens.of(tokenizer)
    mono_idx, bi_idx = np.array([0, 1]), np.array([3, 5, 8])
    batch = collate(shards, mono_idx, bi_idx, cfg, special, torch.Generator().manual_seed(0))
    assert batch.input_ids.shape[0] == 5 and batch.clean_input_ids.shape[0] == 6
    for row, i in enumerate(bi_idx):
        src, tgt, spans = shards.bi(int(i))
        joint = batch.attention_mask[2 + row].bool()
        # The side masks select exactly the source and target tokens of the TLM row.
        clean = batch.clean_input_ids
        assert clean[row][batch.side_src_valid[row]].tolist() == src.tolist()
        assert clean[3 + row][batch.side_tgt_valid[row]].tolist() == tgt.tolist()
        assert int(batch.joint_src_mask[row].sum()) == len(src)
        assert int(batch.joint_tgt_mask[row].sum()) == len(tgt)
        assert not (batch.joint_src_mask[row] & ~joint).any()
    # Joint spans index the same token ids as the side spans they came from.
    unmasked = torch.stack([torch.as_tensor([special.bos, *shards.bi(int(i))[0].tolist(), special.eos, special.eos,
                                             *shards.bi(int(i))[1].tolist(), special.eos]
                                            + [special.pad] * (batch.input_ids.shape[1] - len(shards.bi(int(i))[0]) - len(shards.bi(int(i))[1]) - 4))
                            for i in bi_idx])
    for (p, s0, s1, t0, t1), (_, cs0, cs1, ct0, ct1) in zip(batch.joint_spans.tolist(), batch.side_spans.tolist()):
        assert unmasked[p, s0:s1].tolist() == batch.clean_input_ids[p, cs0:cs1].tolist()
        assert unmasked[p, t0:t1].tolist() == batch.clean_input_ids[3 + p, ct0:ct1].tolist()
    assert len(batch.joint_spans) > 0


def test_separate_bilingual_mode_reuses_the_main_pass(prepared, small_corpus_dir):
    _, tokenizer, shards, _ = prepared
    cfg = _config(small_corpus_dir, **{"data.packing": False, "objectives.mlm.bilingual": "separate",
                                       "objectives.tok.encoding": "separate"})
    batch = collate(shards, np.array([0]), np.array([1, 2]), cfg, SpecialTokens.of(tokenizer),
                    torch.Generator().manual_seed(0))
    assert batch.clean_input_ids is None
    assert batch.input_ids.shape[0] == 5
    assert batch.side_src_rows.tolist() == [1, 2] and batch.side_tgt_rows.tolist() == [3, 4]


@pytest.mark.parametrize("packing", [True, False])
def test_tlm_cross_layers_keep_the_sides_apart_below_the_top_layers(prepared, small_corpus_dir, packing):
    _, tokenizer, shards, _ = prepared
    special = SpecialTokens.of(tokenizer)

    def main_pass(cross, change_target=False):
        cfg = _config(small_corpus_dir, **{"data.packing": packing, "objectives.mlm.tlm_cross_layers": cross,
                                           "objectives.seq.encoding": "joint", "model.dropout": 0.0})
        batch = collate(shards, np.array([0, 1]), np.array([2, 3]), cfg, special, torch.Generator().manual_seed(0))
        if change_target:  # other target tokens, same lengths: the source side must not notice below the cross layers
            tgt = batch.side_ids == 2
            batch.input_ids = torch.where(tgt, (batch.input_ids + 7) % len(tokenizer) + 5, batch.input_ids)
        torch.manual_seed(0)
        model = Veco2ForPretraining(build_encoder(cfg.model, len(tokenizer), special.pad), cfg.objectives).eval()
        with torch.no_grad():
            out = model.encode(batch.input_ids, batch.attention_mask, segment_ids=batch.segment_ids,
                               position_ids=batch.position_ids, side_ids=batch.side_ids)
            plain = model.encode(batch.input_ids, batch.attention_mask, segment_ids=batch.segment_ids,
                                 position_ids=batch.position_ids)
        return batch, out.hidden_states, plain.hidden_states

    layers = 2  # tiny_training_overrides' model
    batch, every_layer, plain = main_pass(cross=layers)  # every layer crosses: plain TLM
    assert len(every_layer) == layers + 1
    assert batch.side_ids.eq(1).any() and batch.side_ids.eq(2).any()
    real = batch.attention_mask.bool()
    for ours, theirs in zip(every_layer, plain):
        torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)

    batch, states, _ = main_pass(cross=1)
    _, changed, _ = main_pass(cross=1, change_target=True)
    src = batch.side_ids == 1
    for layer in range(layers):  # hidden states 0 .. L-1: sides apart
        torch.testing.assert_close(states[layer][src], changed[layer][src], rtol=0, atol=0)
    assert not torch.allclose(states[layers][src], changed[layers][src])  # the top layer sees the other side


@pytest.mark.parametrize("packing", [True, False])
def test_tlm_reset_positions_restart_at_the_target_side(prepared, small_corpus_dir, packing):
    _, tokenizer, shards, _ = prepared
    special = SpecialTokens.of(tokenizer)
    cfg = _config(small_corpus_dir, **{"data.packing": packing, "objectives.mlm.tlm_reset_positions": True,
                                       "objectives.mlm.tlm_cross_layers": 0})
    batch = collate(shards, np.array([0]), np.array([2, 3]), cfg, special, torch.Generator().manual_seed(0))
    first = special.pad + 1
    positions = batch.position_ids
    width = positions.shape[1]
    for n, pair in enumerate((2, 3)):
        src, tgt, _ = shards.bi(pair)
        row, col = divmod(int(batch.pair_index[n, 0]), width) if packing else (int(batch.pair_rows[n]), 0)
        tgt_start = col + len(src) + 2  # after "<s> x </s>"
        assert positions[row, col:tgt_start].tolist() == list(range(first, first + len(src) + 2))
        assert positions[row, tgt_start:tgt_start + len(tgt) + 2].tolist() == list(range(first, first + len(tgt) + 2))


def test_tlm_cross_layers_must_fit_the_encoder(small_corpus_dir, prepared):
    _, tokenizer, _, _ = prepared
    cfg = _config(small_corpus_dir, **{"objectives.mlm.tlm_cross_layers": 3})
    with pytest.raises(Veco2Error, match="tlm_cross_layers=3: the encoder has only 2 layers"):
        Veco2ForPretraining(build_encoder(cfg.model, len(tokenizer), 1), cfg.objectives)


def test_sparse_mlm_loss_equals_the_hf_full_vocabulary_loss(prepared, small_corpus_dir):
    _, tokenizer, shards, _ = prepared
    cfg = _config(small_corpus_dir, **{"data.packing": False, "objectives.mlm.tlm_cross_layers": "null",
                                       "objectives.mlm.tlm_reset_positions": False})  # HF's plain forward
    special = SpecialTokens.of(tokenizer)
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model, len(tokenizer), special.pad).eval()
    batch = collate(shards, np.arange(4), np.arange(4), cfg, special, torch.Generator().manual_seed(1))
    sparse = Veco2ForPretraining(encoder, cfg.objectives, sparse_mlm_head=True)
    full = Veco2ForPretraining(encoder, cfg.objectives, sparse_mlm_head=False)
    hf = encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    torch.testing.assert_close(sparse(batch)["mlm"], hf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full(batch)["mlm"], hf, rtol=1e-5, atol=1e-5)


def test_pretrain_writes_a_model_that_plain_transformers_loads(small_corpus_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    cfg = _config(small_corpus_dir, **{"training.max_steps": 4})
    summary = pretrain(cfg, tmp_path)
    assert (tmp_path / "DONE").exists() and (tmp_path / "model" / "model.safetensors").exists()
    encoder = AutoModel.from_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    saved = load_file(tmp_path / "model" / "model.safetensors")
    torch.testing.assert_close(encoder.embeddings.word_embeddings.weight,
                               saved["roberta.embeddings.word_embeddings.weight"])
    out = encoder(**tokenizer(["Öffnen Sie das Dokument."], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 32
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    assert {"loss_mlm", "loss_seq", "loss_tok", "lr", "grad_norm", "tokens_per_s", "padding_share"} <= set(metrics[0])
    assert summary["provenance"]["git_commit"]
    # 16 instances, half bilingual: 8 pairs, all-gathered over 1 process: 7 negatives per anchor.
    assert summary["sequence_negatives"] == {"pairs_per_process": 8, "processes": 1, "mode": "gather",
                                             "per_process": 7, "global": 7}
    assert set(summary["retrieval"]["accuracy"]) == {"de", "zh", "mean"}
    assert (tmp_path / "config.yaml").exists()
    # the word-translation probe: every layer (0 = embeddings .. 2), its 0/1 rows agree with its accuracies
    probe = summary["word_translation"]
    assert set(probe["by_layer"]) == {"0", "1", "2"} and probe["layer"] == 1
    for layer, scores in probe["by_layer"].items():
        for lang, rows in probe["correct"][layer].items():
            assert len(rows) == probe["items"][lang] >= 2
            assert scores[lang] == pytest.approx(100 * sum(map(sum, rows)) / (2 * len(rows)))


def test_word_translation_probe_uses_only_entries_the_token_loss_never_saw(prepared, small_corpus_dir):
    from veco2.data.corpus import Corpus
    from veco2.probes import trained_word_pairs, word_items

    cfg, tokenizer, shards, _ = prepared
    corpus = Corpus(small_corpus_dir)
    trained = trained_word_pairs(shards, shards.manifest["languages"].index("de"))
    everything = word_items(corpus, "de", tokenizer, 60, cfg.data.max_length, max_words=10_000)
    held_out = word_items(corpus, "de", tokenizer, 60, cfg.data.max_length, max_words=10_000, exclude=trained)
    pairs = {(it.src_word, it.tgt_word) for it in everything}
    assert trained and pairs & trained  # the dev pairs do contain trained entries ...
    assert {(it.src_word, it.tgt_word) for it in held_out} == pairs - trained  # ... which the probe leaves out


@pytest.mark.parametrize("variant,extra", [
    ("mlm_seq_tok", {}),
    ("mlm_seq", {"objectives.seq.negatives": "queue", "objectives.seq.queue_size": 64}),
])
def test_killed_and_resumed_run_ends_bit_identical(prepared, small_corpus_dir, tmp_path, variant, extra):
    # Shared tokenizer and shards: the tokenizers library's Unigram trainer is not bit-reproducible
    # across runs, so a study trains its tokenizer once (see veco2.data.tokenizer).
    data_dir = prepared[3]
    cfg = _config(small_corpus_dir, variant, **extra, **{"data.tokenizer": data_dir / "tokenizer",
                                                         "data.shard_dir": data_dir / "shards"})
    pretrain(cfg, tmp_path / "straight")
    # Interrupted twice: after 5 steps (checkpoint at 4), then after 3 more (checkpoint at 8).
    assert pretrain(cfg, tmp_path / "resumed", stop_after=5) == {"stopped_at": 5}
    assert pretrain(cfg, tmp_path / "resumed", stop_after=4) == {"stopped_at": 8}
    pretrain(cfg, tmp_path / "resumed")
    straight = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_a_second_run_on_the_same_directory_is_refused(small_corpus_dir, tmp_path):
    from veco2.trainer import exclusive_directory

    with exclusive_directory(tmp_path):
        with pytest.raises(Veco2Error, match="another veco2 run"):
            pretrain(_config(small_corpus_dir), tmp_path)


def test_nonfinite_losses_are_skipped_then_stop_training(small_corpus_dir, tmp_path, monkeypatch, caplog):
    cfg = _config(small_corpus_dir, **{"training.max_nonfinite_skips": 2, "training.max_steps": 20})
    original = Veco2ForPretraining.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        losses = original(self, batch)
        calls["n"] += 1
        if calls["n"] > 5:  # steps 0-4 are fine, a checkpoint is written at step 4
            losses["tok"] = losses["tok"] * float("nan")
        return losses

    monkeypatch.setattr(Veco2ForPretraining, "forward", poisoned)
    with pytest.raises(Veco2Error, match=r"step 7: tok is nan; stopping after 3 non-finite steps"):
        pretrain(cfg, tmp_path)
    assert "step 5: tok is nan; step skipped" in caplog.text
    assert (tmp_path / "checkpoints" / "step-000000004").is_dir()


@pytest.mark.slow
def test_200_steps_lower_every_loss_and_seq_alignment_beats_mlm_on_retrieval(prepared, small_corpus_dir, tmp_path):
    data_dir = prepared[3]
    shared = {"data.tokenizer": data_dir / "tokenizer", "data.shard_dir": data_dir / "shards",
              "training.max_steps": 200, "training.warmup_steps": 20, "training.lr": 2e-3,
              "training.checkpoint_every": 1000, "training.log_every": 10, "evaluation.retrieval_layer": -1}
    summaries = {}
    for variant in ("mlm", "mlm_seq", "mlm_seq_tok"):
        summaries[variant] = pretrain(_config(small_corpus_dir, variant, **shared), tmp_path / variant)
        metrics = [json.loads(line) for line in (tmp_path / variant / "metrics.jsonl").read_text().splitlines()]
        for term in ("loss_mlm", "loss_seq", "loss_tok"):
            if term in metrics[0]:
                start = np.mean([m[term] for m in metrics[:3]])
                end = np.mean([m[term] for m in metrics[-3:]])
                assert end < start, (variant, term, start, end)
    accuracy = {v: s["retrieval"]["accuracy"]["mean"] for v, s in summaries.items()}
    assert accuracy["mlm_seq"] > accuracy["mlm"] + 10, accuracy


def test_resuming_with_another_config_is_refused(prepared, small_corpus_dir, tmp_path):
    data_dir = prepared[3]
    shared = {"data.tokenizer": data_dir / "tokenizer", "data.shard_dir": data_dir / "shards"}
    pretrain(_config(small_corpus_dir, **shared), tmp_path, stop_after=4)
    # Logging and checkpoint cadence may change between a run and its resumption ...
    assert pretrain(_config(small_corpus_dir, **shared, **{"training.log_every": 4}), tmp_path,
                    stop_after=4) == {"stopped_at": 8}
    # ... anything that changes the weights may not.
    with pytest.raises(Veco2Error, match=r"step-000000008: checkpoint of a run with another config"):
        pretrain(_config(small_corpus_dir, **shared, **{"objectives.seq.weight": 0.5}), tmp_path)


# -- the faithful defaults ----------------------------------------------------------------------


def test_default_tlm_is_xlm_tlm_every_layer_and_reset_positions(prepared, small_corpus_dir):
    _, tokenizer, shards, _ = prepared
    special = SpecialTokens.of(tokenizer)
    cfg = _config(small_corpus_dir, "mlm", **{"model.dropout": 0.0})
    assert cfg.objectives.mlm.tlm_cross_layers is None and cfg.objectives.mlm.tlm_reset_positions
    cfg = _config(small_corpus_dir, **{"model.dropout": 0.0})  # the same TLM, with the pair views built
    torch.manual_seed(0)
    model = Veco2ForPretraining(build_encoder(cfg.model, len(tokenizer), special.pad), cfg.objectives).eval()

    def source_states(shift_target):
        batch = collate(shards, np.array([0]), np.array([2, 3]), cfg, special, torch.Generator().manual_seed(0))
        assert batch.side_ids is None  # no late-fusion masks
        ids = batch.input_ids
        tgt = torch.zeros(ids.numel(), dtype=torch.bool)
        tgt[batch.pair_index[batch.joint_tgt_mask]] = True
        tgt = tgt.view_as(ids)
        if shift_target:  # other target tokens: the source side sees them from the first layer on
            ids = torch.where(tgt, (ids + 7) % len(tokenizer) + 5, ids)
        with torch.no_grad():
            out = model.encode(ids, batch.attention_mask, segment_ids=batch.segment_ids,
                               position_ids=batch.position_ids)
        src = batch.pair_index[batch.joint_src_mask]
        return [h.flatten(0, 1)[src] for h in out.hidden_states]

    same, changed = source_states(False), source_states(True)
    torch.testing.assert_close(same[0], changed[0], rtol=0, atol=0)  # embeddings: no attention yet
    for layer in (1, 2):
        assert not torch.allclose(same[layer], changed[layer], atol=1e-4), layer


def test_default_contrastive_terms_read_clean_text(prepared, small_corpus_dir):
    _, tokenizer, shards, _ = prepared
    special = SpecialTokens.of(tokenizer)
    cfg = _config(small_corpus_dir, **{"model.dropout": 0.0})
    assert (cfg.objectives.seq.encoding, cfg.objectives.tok.encoding) == ("separate", "separate")
    torch.manual_seed(0)
    model = Veco2ForPretraining(build_encoder(cfg.model, len(tokenizer), special.pad), cfg.objectives).eval()
    losses = []
    for seed in (0, 1):  # two different maskings of the same instances
        batch = collate(shards, np.arange(4), np.arange(6), cfg, special, torch.Generator().manual_seed(seed))
        assert not (batch.clean_input_ids == special.mask).any()
        with torch.no_grad():
            losses.append(model(batch))
        main = model.encode(batch.input_ids, batch.attention_mask, segment_ids=batch.segment_ids,
                            position_ids=batch.position_ids)
        view = model.pair_view(batch, main, main, "separate", -1)
        assert not (view.src_ids == special.mask).any() and not (view.tgt_ids == special.mask).any()
    assert losses[0]["mlm"] != losses[1]["mlm"]
    assert losses[0]["seq"] == losses[1]["seq"] and losses[0]["tok"] == losses[1]["tok"]


def test_default_sequence_term_pools_the_retrieval_layer_as_retrieval_does(prepared, small_corpus_dir):
    from veco2.xtreme.retrieval_run import default_layer

    _, tokenizer, shards, _ = prepared
    special = SpecialTokens.of(tokenizer)
    cfg = _config(small_corpus_dir, **{"model.dropout": 0.0})
    assert cfg.objectives.seq.layer is None
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model, len(tokenizer), special.pad).eval()
    model = Veco2ForPretraining(encoder, cfg.objectives)
    assert model.seq.layer == default_layer(2) == 1 and model.clean_depth == 2  # tok reads the top layer
    assert Veco2ForPretraining(encoder, cfg.objectives, retrieval_layer=-1).seq.layer == 2
    batch = collate(shards, np.arange(2), np.arange(5), cfg, special, torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = model.encode(batch.clean_input_ids, batch.clean_attention_mask,
                             segment_ids=batch.clean_segment_ids, position_ids=batch.clean_position_ids)
        view = model.pair_view(batch, clean, clean, "separate", model.seq.layer)
        pooled = model.seq.embed(view.tgt, view.tgt_mask)
        for n, i in enumerate(range(5)):  # veco2.xtreme.retrieval_run.encode: "<s> y </s>" alone, mean over non-pad
            ids = torch.as_tensor([[special.bos, *shards.bi(i)[1].tolist(), special.eos]])
            states = encoder.roberta(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     output_hidden_states=True).hidden_states[default_layer(2)]
            torch.testing.assert_close(pooled[n], torch.nn.functional.normalize(states[0].mean(0), dim=-1),
                                       rtol=1e-5, atol=1e-5)


def test_clean_pass_stops_at_the_deepest_layer_it_serves(prepared, small_corpus_dir):
    _, tokenizer, shards, _ = prepared
    special = SpecialTokens.of(tokenizer)
    cfg = _config(small_corpus_dir, "mlm_seq", **{"model.dropout": 0.0})
    torch.manual_seed(0)
    model = Veco2ForPretraining(build_encoder(cfg.model, len(tokenizer), special.pad), cfg.objectives).eval()
    assert model.clean_depth == 1  # the sequence term reads layer 1 of 2; the token term is off
    batch = collate(shards, np.arange(2), np.arange(5), cfg, special, torch.Generator().manual_seed(0))
    args = (batch.clean_input_ids, batch.clean_attention_mask)
    kwargs = dict(segment_ids=batch.clean_segment_ids, position_ids=batch.clean_position_ids)
    with torch.no_grad():
        short, full = model.encode(*args, **kwargs, depth=1), model.encode(*args, **kwargs)
        assert len(short.hidden_states) == 2
        real = batch.clean_attention_mask.bool()
        for a, b in zip(short.hidden_states, full.hidden_states):
            torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-6)
        loss_short = model(batch)["seq"]
        model.clean_depth = 2
        torch.testing.assert_close(model(batch)["seq"], loss_short, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("packing", [True, False])
def test_joint_option_leaves_masked_positions_out(prepared, small_corpus_dir, packing):
    _, tokenizer, shards, _ = prepared
    special = SpecialTokens.of(tokenizer)
    cfg = load_config(f"{ABLATIONS}/extra/late_fusion.yaml",
                      overrides=tiny_training_overrides(small_corpus_dir, **{"data.packing": packing,
                                                                             "objectives.mlm.rate": 0.4}))
    torch.manual_seed(0)
    model = Veco2ForPretraining(build_encoder(cfg.model, len(tokenizer), special.pad), cfg.objectives).eval()
    batch = collate(shards, np.arange(2), np.arange(8), cfg, special, torch.Generator().manual_seed(0))
    assert batch.clean_input_ids is None
    with torch.no_grad():
        main = model.encode(batch.input_ids, batch.attention_mask, segment_ids=batch.segment_ids,
                            position_ids=batch.position_ids, side_ids=batch.side_ids)
    view = model.pair_view(batch, main, None, "joint", -1)
    chosen = batch.tlm_rows(batch.labels) != -100
    assert chosen[batch.joint_src_mask].any() and chosen[batch.joint_tgt_mask].any()
    for mask in (view.src_mask, view.tgt_mask, view.src_valid, view.tgt_valid):
        assert not (mask.bool() & chosen).any()
    # Pooling: <s> x </s> and </s> y </s> of the row (as retrieval pools), less the masked positions.
    assert torch.equal(view.src_mask.bool(), batch.joint_src_pool & ~chosen)
    assert torch.equal(view.tgt_mask.bool(), batch.joint_tgt_pool & ~chosen)
    assert (batch.joint_src_pool & ~batch.joint_src_mask).sum() == 2 * 8  # <s>, </s> per pair
    for p, s0, s1, t0, t1 in view.spans.tolist():
        assert not chosen[p, s0:s1].any() and not chosen[p, t0:t1].any()
    assert 0 < len(view.spans) < len(batch.joint_spans)
    # The copies rule reads the unmasked ids.
    ids = batch.tlm_rows(torch.where(batch.labels != -100, batch.labels, batch.input_ids))
    assert torch.equal(view.src_ids, ids) and not (view.src_ids[batch.joint_src_mask] == special.mask).any()


def test_paper_scale_configs_use_an_infoxlm_sized_queue():
    root = ABLATIONS.parent / "config" / "pretrain"
    for name in ("base", "large"):
        seq = load_config(root / f"{name}.yaml", ABLATIONS / "mlm_seq_tok.yaml").objectives.seq
        assert (seq.negatives, seq.queue_size, seq.momentum) == ("queue", 131072, 0.9999)
    xlco = load_config(ABLATIONS / "extra" / "infoxlm_xlco.yaml").objectives.seq
    assert (xlco.similarity, xlco.pooling, xlco.layer, xlco.temperature) == ("dot", "cls", 8, 0.25)


def test_bad_sequence_options_name_the_key(small_corpus_dir):
    from veco2.errors import ConfigError

    with pytest.raises(ConfigError, match=r"objectives.seq.layer: got 5, must be a hidden layer of the 2-layer model"):
        _config(small_corpus_dir, **{"objectives.seq.layer": 5})
    with pytest.raises(ConfigError, match=r"objectives.seq.similarity: got 'l2', expected one of 'cosine', 'dot'"):
        _config(small_corpus_dir, **{"objectives.seq.similarity": "l2"})

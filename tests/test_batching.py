"""The collator's typed output: which fields a config sets, device moves, pickling, pinned memory."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data._utils.pin_memory import pin_memory as torch_pin_memory

from veco2.bench import SyntheticShards
from veco2.config import load_config
from veco2.data.batching import PretrainingBatch, SpecialTokens, collate

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"

TOKEN_IDS = SpecialTokens(bos=0, eos=2, pad=1, mask=4, vocab_size=200)
SHARDS = SyntheticShards.make(8, 6, 20, vocab=200, seed=3)
ALWAYS = {"input_ids", "attention_mask", "labels"}


def _batch(variant: str, *overrides: str) -> PretrainingBatch:
    cfg = load_config(ABLATIONS / f"{variant}.yaml", overrides=["data.corpus=demo", *overrides])
    return collate(SHARDS, np.arange(3), np.arange(4), cfg, TOKEN_IDS, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("variant,overrides,fields", [
    ("mlm", ["data.packing=false", "objectives.mlm.tlm_reset_positions=false"], ALWAYS),
    ("mlm", ["data.packing=false"], ALWAYS | {"position_ids"}),  # TLM rows: the target side restarts
    ("mlm", ["data.packing=false", "objectives.mlm.tlm_cross_layers=1"], ALWAYS | {"position_ids", "side_ids"}),
    ("mlm", ["data.packing=true"], ALWAYS | {"segment_ids", "position_ids"}),
    ("mlm_seq_tok", ["data.packing=false", "objectives.mlm.tlm_reset_positions=false"],
     ALWAYS | {"pair_rows", "joint_src_mask", "joint_tgt_mask", "joint_src_pool", "joint_tgt_pool", "joint_spans",
               "clean_input_ids", "clean_attention_mask", "side_src_rows", "side_tgt_rows", "side_src_mask",
               "side_tgt_mask", "side_src_valid", "side_tgt_valid", "side_spans"}),
    ("mlm_seq_tok", ["data.packing=true", "objectives.mlm.bilingual=separate"],
     ALWAYS | {"segment_ids", "position_ids", "side_src_index", "side_tgt_index", "side_src_mask", "side_tgt_mask",
               "side_src_valid", "side_tgt_valid", "side_spans"}),
])
def test_the_config_decides_which_fields_are_set(variant, overrides, fields):
    batch = _batch(variant, *overrides)
    assert type(batch) is PretrainingBatch
    assert set(batch.tensors()) == fields  # every other field is None


def test_to_pickle_and_pin_memory_keep_the_type_and_the_tensors(monkeypatch):
    batch = _batch("mlm_seq_tok")
    moved = batch.to("cpu")
    assert type(moved) is PretrainingBatch and moved.pair_rows is None and moved.side_src_rows is None
    assert all(torch.equal(moved.tensors()[k], v) for k, v in batch.tensors().items())
    restored = pickle.loads(pickle.dumps(batch))  # DataLoader workers send batches pickled
    assert restored.tensors().keys() == batch.tensors().keys()
    assert all(torch.equal(restored.tensors()[k], v) for k, v in batch.tensors().items())
    # torch's pin-memory thread calls the batch's pin_memory(); pinning itself needs an accelerator,
    # so record which tensors it was asked to pin.
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t) or t.clone())
    out = torch_pin_memory(batch)
    assert type(out) is PretrainingBatch and out.pair_rows is None
    assert len(pinned) == len(batch.tensors())
    assert all(torch.equal(out.tensors()[k], v) for k, v in batch.tensors().items())


def test_views_gather_the_same_rows_packed_or_not():
    plain, packed = _batch("mlm_seq_tok", "data.packing=false"), _batch("mlm_seq_tok", "data.packing=true")
    for batch in (plain, packed):
        # The clean pass holds "<s> x </s>" of every source side, then every target side.
        src = batch.src_sides(batch.clean_input_ids)
        tgt = batch.tgt_sides(batch.clean_input_ids)
        for n in range(4):
            x, y, _ = SHARDS.bi(n)
            assert src[n][batch.side_src_valid[n]].tolist() == x.tolist()
            assert tgt[n][batch.side_tgt_valid[n]].tolist() == y.tolist()
        unmasked = torch.where(batch.labels != -100, batch.labels, batch.input_ids)
        rows = batch.tlm_rows(unmasked)
        for n in range(4):
            x, y, _ = SHARDS.bi(n)
            assert rows[n][batch.joint_src_mask[n]].tolist() == x.tolist()
            assert rows[n][batch.joint_tgt_mask[n]].tolist() == y.tolist()


# ----------------------------------------------------------------------------------------------
# Exponentially smoothed language sampling (XLM-R's alpha)


def test_epoch_slots_follow_xlmr_smoothing_by_hand():
    from veco2.data.batching import epoch_slots

    # p = (.9, .09, .01); p^0.3 = (.96889, .48555, .25119), sum 1.70563 -> q = (.56806, .28467, .14727);
    # x 1000 draws = 568.06, 284.67, 147.27 -> floors 568, 284, 147 (999) + the largest remainder (.67) -> 285.
    assert epoch_slots(np.array([900, 90, 10]), 0.3).tolist() == [568, 285, 147]
    assert epoch_slots(np.array([900, 90, 10]), 1.0).tolist() == [900, 90, 10]
    assert epoch_slots(np.array([5, 5]), 0.0).tolist() == [5, 5]


def _smoothed_sampler(alpha, rank=0, world=1):
    from veco2.data.batching import StepSampler

    langs = np.array([0] * 900 + [1] * 90 + [2] * 10)
    return langs, StepSampler(1000, 0, np.ones(1000), np.ones(0), 10, 0.0, 5, False, 1, rank, world,
                              mono_languages=langs, language_alpha=alpha)


def test_smoothed_sampling_draws_each_language_its_slots_per_epoch_and_every_instance():
    langs, sampler = _smoothed_sampler(0.3)
    epoch = np.concatenate([sampler.indices(step)[0] for step in range(100)])  # 100 steps x 10 = one epoch
    assert np.bincount(langs[epoch]).tolist() == [568, 285, 147]
    # a small language cycles through all its instances (each seen 14-15 times), a large one is cut
    assert set(epoch[langs[epoch] == 2]) == set(range(990, 1000))
    assert len(set(epoch[langs[epoch] == 0])) == 568


def test_smoothed_sampling_is_a_pure_function_of_the_step_and_splits_ranks():
    _, sampler = _smoothed_sampler(0.3)
    steps = [sampler.indices(step)[0] for step in range(250)]
    _, again = _smoothed_sampler(0.3)
    for step in (230, 3, 101, 0):  # any order, across epochs: a resumed run sees the same batches
        assert np.array_equal(again.indices(step)[0], steps[step])
    (_, rank0), (_, rank1) = _smoothed_sampler(0.3, 0, 2), _smoothed_sampler(0.3, 1, 2)
    first, second = rank0.indices(7)[0], rank1.indices(7)[0]
    assert len(first) == len(second) == 10 and not set(first) & set(second)


def test_alpha_one_is_the_plain_permutation_of_all_instances():
    from veco2.data.batching import StepSampler

    _, smoothed = _smoothed_sampler(1.0)
    plain = StepSampler(1000, 0, np.ones(1000), np.ones(0), 10, 0.0, 5, False, 1)
    assert all(np.array_equal(smoothed.indices(step)[0], plain.indices(step)[0]) for step in (0, 57, 140))

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

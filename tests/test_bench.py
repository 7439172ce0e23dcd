"""`veco2 bench` runs for a few steps and writes well-formed output; packing is exact.

Benchmarks are not timed tests: nothing here asserts a speed.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import tiny_training_overrides

from veco2.bench import SyntheticShards, batch_statistics, main
from veco2.config import load_config
from veco2.data.batching import PretrainingBatch, SpecialTokens, collate, pack_first_fit
from veco2.model import Veco2ForPretraining, build_encoder

TINY = ["--data", "synthetic", "--size", "tiny", "--vocab-size", "500", "--seq-len", "24", "--batch-size", "6",
        "--steps", "1", "--warmup", "1", "--repeats", "2", "--synthetic-count", "64", "--no-memory",
        "--threads", "1"]  # one thread: a shared CI machine makes 2 threads wait for each other


def test_pack_first_fit_by_hand():
    # Decreasing order 7, 7, 5, 4, 3, 2, 1 into rows of 7: [7] [7] [5 2] [4 3] [1].
    row, offset, rows = pack_first_fit([7, 3, 5, 2, 7, 1, 4], 7)
    assert rows == 5
    assert row.tolist() == [0, 3, 2, 2, 1, 4, 3]
    assert offset.tolist() == [0, 4, 0, 5, 0, 0, 0]


def _mini_config(packing: bool, variant: str = "mlm_seq_tok", **extra):
    cfg = load_config(f"ablations/{variant}.yaml",  # with the clean pass too, to check both passes
                      overrides=tiny_training_overrides("unused", **{"objectives.tok.encoding": "separate", **extra}))
    object.__setattr__(cfg.data, "packing", packing)
    return cfg


@pytest.mark.parametrize("implementation,cross_layers", [("sdpa", "null"), ("eager", "null"), ("sdpa", 1), ("eager", 1)])
def test_packed_sequences_are_encoded_exactly_as_alone(implementation, cross_layers):
    shards = SyntheticShards.make(16, 6, 30, vocab=200, seed=1)
    special = SpecialTokens(bos=0, eos=2, pad=1, mask=4, vocab_size=200)
    cfg = _mini_config(False, **{"objectives.mlm.tlm_cross_layers": cross_layers})  # full TLM / late fusion
    cfg.model.attn_implementation = implementation
    torch.manual_seed(0)
    model = Veco2ForPretraining(build_encoder(cfg.model, 200, special.pad), cfg.objectives).eval()
    mono, bi = np.arange(5), np.arange(6)
    plain = collate(shards, mono, bi, cfg, special, torch.Generator().manual_seed(0))
    object.__setattr__(cfg.data, "packing", True)
    packed = collate(shards, mono, bi, cfg, special, torch.Generator().manual_seed(0))
    assert packed.input_ids.shape[0] < plain.input_ids.shape[0]
    assert batch_statistics(packed)["tokens"] == batch_statistics(plain)["tokens"]

    def unmasked(batch):  # the masking draws differ with the shape: compare on the original ids
        return torch.where(batch.labels != -100, batch.labels, batch.input_ids)

    with torch.no_grad():
        for name, encoding in (("main", "joint"), ("clean", "separate")):
            prefix = "" if name == "main" else "clean_"
            ids_a = unmasked(plain) if name == "main" else plain.clean_input_ids
            ids_b = unmasked(packed) if name == "main" else packed.clean_input_ids
            sides = {"side_ids": plain.side_ids} if name == "main" else {}  # late fusion: sides apart below
            a = model.encode(ids_a, getattr(plain, f"{prefix}attention_mask"),
                             position_ids=getattr(plain, f"{prefix}position_ids"), **sides)
            b = model.encode(ids_b, getattr(packed, f"{prefix}attention_mask"),
                             segment_ids=getattr(packed, f"{prefix}segment_ids"),
                             position_ids=getattr(packed, f"{prefix}position_ids"),
                             side_ids=packed.side_ids if sides else None)
            # The views of the main pass leave out the positions chosen for MLM, which differ with
            # the shapes: read both as unmasked (the ids encoded above).
            view_plain = dataclasses.replace(plain, input_ids=ids_a, labels=torch.full_like(plain.labels, -100))
            view_packed = dataclasses.replace(packed, input_ids=ids_b, labels=torch.full_like(packed.labels, -100))
            for layer in (-2, -1):  # late fusion: sides apart, sides joined
                view_a = model.pair_view(view_plain, a, a if name == "clean" else None, encoding, layer)
                view_b = model.pair_view(view_packed, b, b if name == "clean" else None, encoding, layer)
                width = view_b.src.shape[1]
                for x, y, mask in ((view_a.src, view_b.src, view_b.src_mask), (view_a.tgt, view_b.tgt, view_b.tgt_mask)):
                    mask = mask.bool()
                    torch.testing.assert_close(x[:, :width][mask], y[mask], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(view_a.src_mask[:, :width].bool(), view_b.src_mask.bool())
                assert torch.equal(view_a.spans, view_b.spans)
        # Without the block-diagonal mask the packed sequences would see each other.
        leaky = model.encode(packed.clean_input_ids, packed.clean_attention_mask,
                             position_ids=packed.clean_position_ids)
        view = model.pair_view(packed, leaky, leaky, "separate", -1)
        assert not torch.allclose(view.src[view_b.src_mask.bool()], view_b.src[view_b.src_mask.bool()], atol=1e-3)


def test_bench_pretrain_writes_results(tmp_path, capsys):
    out = tmp_path / "pretrain.json"
    assert main(["pretrain", *TINY, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["systems"]) == {"veco2", "baseline"}
    for system in result["systems"].values():
        assert system["tokens_per_s"] > 0 and len(system["tokens_per_s_rounds"]) == 2
        assert 0 <= system["padding_share"] < 1
        assert system["mfu"] is None  # CPU: no peak FLOP/s
    veco2, baseline = result["systems"]["veco2"], result["systems"]["baseline"]
    assert veco2["options"]["packing"] and veco2["options"]["sparse_mlm_head"]
    assert not baseline["options"]["packing"] and baseline["options"]["attn_implementation"] == "eager"
    assert veco2["padding_share"] < baseline["padding_share"]
    # The ratio is the median of the per-round ratios.
    rounds = [a / b for a, b in zip(veco2["tokens_per_s_rounds"], baseline["tokens_per_s_rounds"])]
    assert result["ratios"]["veco2/baseline"] == pytest.approx(float(np.median(rounds)))
    assert result["provenance"]["git_commit"] and result["device"]["type"] == "cpu"
    assert "veco2/baseline" in capsys.readouterr().out


def test_bench_variants_and_peak_flops_give_mfu(tmp_path):
    out = tmp_path / "variants.json"
    args = [a for a in TINY if a != "--no-memory"]
    assert main(["variants", *args, "--system", "mlm=veco2:mlm", "--system",
                 "joint=veco2:mlm_seq_tok:objectives.seq.encoding=joint,objectives.tok.encoding=joint", "--peak-flops", "1e12",
                 "--no-memory", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["ratios"]) == ["joint/mlm"]
    joint = result["systems"]["joint"]
    assert joint["options"]["seq_encoding"] == "joint" and not joint["options"]["clean_pass"]
    assert joint["mfu"] == pytest.approx(joint["flops_per_token"] * joint["tokens_per_s"] / 1e12)


def test_bench_rejects_an_unknown_system_kind(tmp_path, capsys):
    assert main(["pretrain", *TINY, "--system", "x=hf", "--out", str(tmp_path / "x.json")]) == 2
    assert "kind must be veco2 or baseline" in capsys.readouterr().err


def test_background_workers_yield_the_same_batches_as_the_loop():
    from veco2.data.batching import StepBatches, StepSampler

    shards = SyntheticShards.make(40, 6, 30, vocab=200, seed=2)
    special = SpecialTokens(bos=0, eos=2, pad=1, mask=4, vocab_size=200)
    cfg = _mini_config(True)
    cfg.training.grad_accum = 2
    sampler = StepSampler(shards.num_mono, shards.num_bi, shards.mono_lengths(), shards.bi_lengths(), 6, 0.5, 0,
                          False, 4)
    dataset = StepBatches(shards, sampler, cfg, special, start=6, end=12)  # resumed at step 3 of 6
    in_process = [dataset[i] for i in range(len(dataset))]
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    from_workers = list(loader)
    assert len(from_workers) == 6
    for a, b in zip(in_process, from_workers):
        assert type(b) is PretrainingBatch
        a, b = a.tensors(), b.tensors()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Item i of a resumed dataset is item start + i of a fresh one.
    fresh = StepBatches(shards, sampler, cfg, special, start=0, end=12)
    assert all(torch.equal(fresh[6 + i].input_ids, in_process[i].input_ids) for i in range(6))
    assert not torch.equal(fresh[6].labels, fresh[7].labels)


def test_bench_prepare_times_the_real_preparation_with_each_worker_count(tmp_path):
    """`veco2 bench prepare`: one fresh process per (size, workers), the real `veco2 data prepare`, and
    both worker counts write shards of the same size (they are byte-identical: test_prepare_parallel)."""
    import json

    from veco2 import cli

    assert cli.main(["bench", "prepare", "--pairs", "600", "--workers", "1", "2", "--chunk-size", "200",
                     "--work-dir", str(tmp_path / "work"), "--results", str(tmp_path / "results")]) == 0
    (path,) = (tmp_path / "results").glob("prepare-*.json")
    record = json.loads(path.read_text())
    runs = {run["workers"]: run for run in record["runs"]}
    assert set(runs) == {1, 2} and all(run["pairs"] == 600 and run["pairs_per_s"] > 0 for run in runs.values())
    assert runs[1]["shard_bytes"] == runs[2]["shard_bytes"] > 0
    assert runs[2]["worker_max_rss_mb"] > 0 and runs[1]["worker_max_rss_mb"] == 0  # 1 worker: in the main process

"""Checkpoints of an FSDP-sharded model on 2 CPU processes (gloo, FSDP2 ``fully_shard``).

accelerate only enables FSDP on accelerators, so the model is sharded here with torch's own
``fully_shard``, which is what ``accelerate launch --use_fsdp --fsdp_version 2`` applies on GPUs;
the checkpoint code under test is the trainer's (``veco2.checkpoint``).  Checked:

* save -> load into a fresh sharded model restores weights and optimizer exactly, and training
  on from both gives the same weights bit for bit (resume);
* the checkpoint written by sharded processes holds the whole model: it loads into one unsharded
  process with the same values (a run moves between FSDP, DDP and one process);
* the final export is a complete Hugging Face model (``AutoModel`` loads the gathered weights).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import debug_launcher

from veco2.checkpoint import export_encoder, gather_model_state, load_checkpoint, save_checkpoint
from veco2.config import ModelConfig, ObjectivesConfig
from veco2.model import Veco2ForPretraining, build_encoder

WORLD, VOCAB = 2, 64


def _model(seed: int, sharded: bool):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    encoder = build_encoder(ModelConfig(size="tiny", dropout=0.0), vocab_size=VOCAB, pad_token_id=1)
    model = Veco2ForPretraining(encoder, ObjectivesConfig())
    if sharded:
        mesh = init_device_mesh("cpu", (WORLD,))
        for layer in encoder.roberta.encoder.layer:
            fully_shard(layer, mesh=mesh)
        fully_shard(model.encoder, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    return model, optimizer, get_linear_schedule_with_warmup(optimizer, 1, 10)


def _train_step(model, optimizer, scheduler, step: int) -> None:
    g = torch.Generator().manual_seed(100 * step + dist.get_rank())  # each process its own rows
    ids = torch.randint(5, VOCAB, (3, 7), generator=g)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.3, ids, -100)
    labels[:, 0] = ids[:, 0]  # at least one masked position per row
    model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _worker(root: str) -> None:
    torch.set_num_threads(1)
    root = Path(root)
    rank = dist.get_rank()
    model, optimizer, scheduler = _model(seed=0, sharded=True)
    _train_step(model, optimizer, scheduler, 1)
    save_checkpoint(root, 1, model, optimizer, scheduler, {"step": 1}, keep=2)
    dist.barrier()
    saved = gather_model_state(model)

    fresh, fresh_optimizer, fresh_scheduler = _model(seed=1, sharded=True)
    state = load_checkpoint(root / "step-000000001", fresh, fresh_optimizer, fresh_scheduler)
    assert state == {"step": 1} and fresh_scheduler.last_epoch == 1
    restored = gather_model_state(fresh)
    assert rank != 0 or (_equal(saved, restored) and len(saved) > 20)

    _train_step(model, optimizer, scheduler, 2)  # the uninterrupted run and the resumed one go on
    _train_step(fresh, fresh_optimizer, fresh_scheduler, 2)
    continued, resumed = gather_model_state(model), gather_model_state(fresh)
    assert rank != 0 or _equal(continued, resumed)

    encoder_state = {k.removeprefix("encoder."): v for k, v in saved.items() if k.startswith("encoder.")}
    if rank == 0:
        single, single_optimizer, single_scheduler = _model(seed=2, sharded=False)
        load_checkpoint(root / "step-000000001", single, single_optimizer, single_scheduler)
        assert _equal(single.state_dict(), saved)
        assert single_optimizer.state_dict()["state"][0]["step"] == 1  # Adam moments came along

        from transformers import AutoModel

        export_encoder(single.encoder, encoder_state, None, root / "model")
        loaded = AutoModel.from_pretrained(root / "model").state_dict()  # + a fresh pooler MLM models lack
        roberta = {k.removeprefix("encoder.roberta."): v for k, v in saved.items() if k.startswith("encoder.roberta.")}
        assert "embeddings.word_embeddings.weight" in roberta and _equal(roberta, {k: loaded[k] for k in roberta})
    dist.barrier()


def test_fsdp_sharded_checkpoints_resume_exactly_and_load_unsharded():
    with tempfile.TemporaryDirectory() as root:
        debug_launcher(_worker, args=(root,), num_processes=WORLD)

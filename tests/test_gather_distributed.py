"""Gathered negatives on 2 CPU processes (gloo) equal single-process training on the whole batch.

Launched with ``accelerate.debug_launcher`` (forks 2 processes that share a gloo process group);
assertion errors inside a worker fail the test through the launcher.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import debug_launcher

from veco2.objectives import SequenceContrastive

DT = torch.float64
WORLD, N_LOCAL, LENGTH, HIDDEN = 2, 3, 5, 4


def _global_batch():
    """The same global batch on every process (same seed); each process takes its rows."""
    g = torch.Generator().manual_seed(0)
    n = WORLD * N_LOCAL
    src = torch.randn(n, LENGTH, HIDDEN, dtype=DT, generator=g)
    tgt = torch.randn(n, LENGTH + 1, HIDDEN, dtype=DT, generator=g)
    src_mask = torch.arange(LENGTH)[None] < torch.randint(1, LENGTH + 1, (n, 1), generator=g)
    tgt_mask = torch.arange(LENGTH + 1)[None] < torch.randint(1, LENGTH + 2, (n, 1), generator=g)
    return src, src_mask, tgt, tgt_mask


def _check_gathered_equals_single_process(symmetric: bool) -> None:
    rank = dist.get_rank()
    assert dist.get_world_size() == WORLD
    src, src_mask, tgt, tgt_mask = _global_batch()

    # Single process, whole batch: in-batch negatives over all WORLD * N_LOCAL pairs.
    whole_src, whole_tgt = src.clone().requires_grad_(), tgt.clone().requires_grad_()
    single = SequenceContrastive(temperature=0.1, symmetric=symmetric, negatives="in_batch")
    reference = single(whole_src, src_mask, whole_tgt, tgt_mask)
    ref_grad_src, ref_grad_tgt = torch.autograd.grad(reference, [whole_src, whole_tgt])

    # This process: its own rows, negatives gathered from both processes.
    rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    local_src, local_tgt = src[rows].clone().requires_grad_(), tgt[rows].clone().requires_grad_()
    gathered = SequenceContrastive(temperature=0.1, symmetric=symmetric, negatives="gather")
    loss = gathered(local_src, src_mask[rows], local_tgt, tgt_mask[rows])
    grad_src, grad_tgt = torch.autograd.grad(loss, [local_src, local_tgt])

    # The global mean loss is the mean of the per-process losses (equal local sizes).
    losses = [torch.zeros((), dtype=DT) for _ in range(WORLD)]
    dist.all_gather(losses, loss.detach())
    assert torch.allclose(torch.stack(losses).mean(), reference.detach(), atol=1e-12)
    # Each process's gradient is WORLD x the global-mean gradient of its rows; DDP's gradient
    # averaging divides it back.
    assert torch.allclose(grad_src / WORLD, ref_grad_src[rows], atol=1e-12)
    assert torch.allclose(grad_tgt / WORLD, ref_grad_tgt[rows], atol=1e-12)


def _check_unequal_sizes_rejected() -> None:
    x = torch.randn(2 + dist.get_rank(), 3)
    try:
        SequenceContrastive(negatives="gather")(x[:, None], torch.ones(len(x), 1), x[:, None],
                                                torch.ones(len(x), 1))
    except ValueError as err:
        assert "equal local batch sizes" in str(err)
    else:
        raise AssertionError("unequal local batch sizes were accepted")


def _check_queue_is_shared() -> None:
    rank = dist.get_rank()
    objective = SequenceContrastive(2, negatives="queue", queue_size=8)
    keys = F.normalize(torch.tensor([[1.0, float(rank)], [float(rank), 1.0]]), dim=-1)
    objective.enqueue(keys)
    # Both processes hold the keys of both processes, in rank order.
    expected = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]), dim=-1)
    assert torch.allclose(objective.queue[:4], expected)
    assert objective.queue_filled.item() == 4


def _worker() -> None:
    torch.set_num_threads(1)
    for symmetric in (True, False):
        _check_gathered_equals_single_process(symmetric)
    _check_unequal_sizes_rejected()
    _check_queue_is_shared()


def test_gathered_negatives_match_single_process_on_two_processes():
    debug_launcher(_worker, num_processes=WORLD)

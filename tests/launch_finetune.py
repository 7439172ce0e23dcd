"""``torchrun ... tests/launch_finetune.py DUMP_DIR ARGS...``: run ``veco2 ARGS`` with two
recorders, for the multi-process test in ``tests/test_finetune_accelerate.py``.

Each process saves to ``DUMP_DIR/rank{R}.pt``: ``grads``, the gradient of every parameter just before
every optimizer step (after DDP's all-reduce), and ``train_rows``, the rows of every training forward
pass (read at the word-embedding look-up).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def main() -> int:
    dump, argv = Path(sys.argv[1]), sys.argv[2:]
    grads, train_rows = [], []

    def before_step(optimizer, args, kwargs):
        if isinstance(optimizer, torch.optim.AdamW):  # the inner optimizer, not accelerate's wrapper
            grads.append([p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"]])

    def before_forward(module, args):
        if isinstance(module, torch.nn.Embedding) and module.training and args:
            train_rows.append(int(args[0].shape[0]))

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from veco2.cli import main as veco2

    handles = [register_optimizer_step_pre_hook(before_step),
               torch.nn.modules.module.register_module_forward_pre_hook(before_forward)]
    try:
        return veco2(argv)
    finally:
        for handle in handles:
            handle.remove()
        dump.mkdir(parents=True, exist_ok=True)
        torch.save({"grads": grads, "train_rows": train_rows}, dump / f"rank{os.environ.get('RANK', '0')}.pt")


if __name__ == "__main__":
    sys.exit(main())

"""``veco2 bench``: how much hardware time veco2's pre-training step wastes, measured.

Sub-commands, each printing a table and writing one JSON file with provenance: ``pretrain``
(veco2's training step against a plain Hugging Face baseline of the same objective variant,
interleaved in one process), ``variants`` (the cost of the contrastive objectives),
``optimizations`` (each optimisation switched off on its own), ``retrieval`` (BUCC-scale margin
mining of random sentence vectors) and ``mining`` (runs ``benchmarks/mining_vs_tokenization.py``).
:mod:`.systems` builds what is timed, :mod:`.timing` times it, :mod:`.cli` is the command line;
benchmarks/RESULTS.md has the figures.
"""

from __future__ import annotations

import importlib

from .cli import main

# veco2.cli imports this package to build its parser: the torch-side names load on first use, so
# that ``veco2 --version`` does not import torch.
_LAZY = {"SyntheticShards": "synthetic", "batch_statistics": "systems"}

__all__ = ["SyntheticShards", "batch_statistics", "main"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)

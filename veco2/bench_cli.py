"""``veco2 bench ...``: the command-line arguments of :mod:`veco2.bench`.  ``register(subparsers)``
is called by :mod:`veco2.cli`; the handlers import :mod:`veco2.bench` (torch, transformers) only
when a benchmark runs, so that ``veco2 --help`` and ``veco2 --version`` stay fast."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def _handler(name: str):
    def run(args) -> None:
        from . import bench

        return getattr(bench, name)(args)

    return run


def _training_arguments(parser: argparse.ArgumentParser, variant: bool = True) -> None:
    if variant:
        parser.add_argument("--variant", default="mlm_seq_tok", help="objective variant (ablations/NAME.yaml)")
    parser.add_argument("--system", action="append", default=[], metavar="LABEL=KIND[:VARIANT][:k=v,...]",
                        help="systems to compare (default depends on the sub-command); KIND is veco2 or baseline")
    parser.add_argument("--size", default="small", help="model.size (tiny, small, base, large; checked by the config)")
    parser.add_argument("--vocab-size", type=int, default=32000, help="model vocabulary (embedding rows)")
    parser.add_argument("--seq-len", type=int, default=64, help="data.max_length: tokens of one side / sentence")
    parser.add_argument("--min-len", type=int, default=None, help="synthetic data: shortest sequence (default seq-len/2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per system and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="rounds (medians are over rounds)")
    parser.add_argument("--data", default="demo", help="'demo', a corpus directory, or 'synthetic'")
    parser.add_argument("--tokenizer-vocab", type=int, default=8000, help="pieces of the tokenizer trained on --data")
    parser.add_argument("--synthetic-count", type=int, default=20000)
    parser.add_argument("--cache", default=os.environ.get("VECO2_BENCH_CACHE",
                                                          str(Path.home() / ".cache" / "veco2" / "bench")))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); on a loaded machine 2 threads can be far "
                             "slower than 1 (threads wait for each other)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="veco2 on GPU: bf16 autocast (auto) or fp32; the baseline is always fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile veco2's model (GPU)")
    parser.add_argument("--no-fused", action="store_true", help="no fused AdamW for veco2 on GPU")
    parser.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU")
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU peak-RSS child processes")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every system")
    parser.add_argument("--name", help="result file name (benchmarks/results/NAME.json)")
    parser.add_argument("--out", help="result file path (overrides --name)")


def register(subparsers) -> None:
    """Add ``veco2 bench ...`` to the ``veco2`` command line."""
    bench = subparsers.add_parser("bench", help="throughput benchmarks (veco2 vs a plain HF baseline, ...)")
    commands = bench.add_subparsers(dest="bench_command", required=True)
    pretrain = commands.add_parser("pretrain", help="veco2's training step vs the plain HF baseline")
    _training_arguments(pretrain)
    pretrain.set_defaults(func=_handler("cmd_pretrain"))
    variants = commands.add_parser("variants", help="cost of the contrastive objectives (mlm vs mlm_seq_tok ...)")
    _training_arguments(variants, variant=False)
    variants.set_defaults(func=_handler("cmd_variants"))
    optimizations = commands.add_parser("optimizations", help="each optimisation of veco2 switched off alone")
    _training_arguments(optimizations)
    optimizations.set_defaults(func=_handler("cmd_optimizations"))
    retrieval = commands.add_parser("retrieval", help="BUCC-scale margin mining of random sentence vectors")
    retrieval.add_argument("--n", type=int, default=100_000)
    retrieval.add_argument("--dim", type=int, default=256)
    retrieval.add_argument("--k", type=int, default=4)
    retrieval.add_argument("--chunk-size", type=int, default=2048)
    retrieval.add_argument("--name")
    retrieval.add_argument("--out")
    retrieval.set_defaults(func=_handler("cmd_retrieval"))
    mining = commands.add_parser("mining", help="synonym mining vs tokenization (benchmarks/mining_vs_tokenization.py)")
    mining.add_argument("--pairs", type=int, default=1_000_000)
    mining.add_argument("--repeats", type=int, default=3)
    mining.add_argument("--name")
    mining.add_argument("--out")
    mining.set_defaults(func=_handler("cmd_mining"))



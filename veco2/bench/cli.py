"""``veco2 bench ...``: the command line of :mod:`veco2.bench`.  ``register(subparsers)`` is called
by :mod:`veco2.cli`; the handlers (``cmd_*``) import torch and transformers (:mod:`.systems`,
:mod:`.timing`) only when a benchmark runs, so that ``veco2 --help`` and ``veco2 --version`` stay
fast."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Veco2Error
from ..fileio import write_json
from ..provenance import provenance

if TYPE_CHECKING:
    from .systems import SystemSpec

# Results land in the checkout's benchmarks/results/ (relative to the working directory, not to the
# package, so that an installed veco2 writes next to the user's files); --out overrides it.
RESULTS = Path("benchmarks") / "results"


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
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides applied to every system, as `veco2 pretrain` takes them")
    parser.add_argument("--name", help="result file name (benchmarks/results/NAME.json)")
    parser.add_argument("--out", help="result file path (overrides --name)")


def register(subparsers) -> None:
    """Add ``veco2 bench ...`` to the ``veco2`` command line."""
    bench = subparsers.add_parser("bench", help="throughput benchmarks (veco2 vs a plain HF baseline, ...)")
    commands = bench.add_subparsers(dest="bench_command", required=True)
    pretrain = commands.add_parser("pretrain", help="veco2's training step vs the plain HF baseline")
    _training_arguments(pretrain)
    pretrain.set_defaults(func=cmd_pretrain)
    variants = commands.add_parser("variants", help="cost of the contrastive objectives (mlm vs mlm_seq_tok ...)")
    _training_arguments(variants, variant=False)
    variants.set_defaults(func=cmd_variants)
    optimizations = commands.add_parser("optimizations", help="each optimisation of veco2 switched off alone")
    _training_arguments(optimizations)
    optimizations.set_defaults(func=cmd_optimizations)
    retrieval = commands.add_parser("retrieval", help="BUCC-scale margin mining of random sentence vectors")
    retrieval.add_argument("--n", type=int, default=100_000)
    retrieval.add_argument("--dim", type=int, default=256)
    retrieval.add_argument("--k", type=int, default=4)
    retrieval.add_argument("--chunk-size", type=int, default=2048)
    retrieval.add_argument("--name")
    retrieval.add_argument("--out")
    retrieval.set_defaults(func=cmd_retrieval)
    mining = commands.add_parser("mining", help="synonym mining vs tokenization (benchmarks/mining_vs_tokenization.py)")
    mining.add_argument("--pairs", type=int, default=1_000_000)
    mining.add_argument("--repeats", type=int, default=3)
    mining.add_argument("--name")
    mining.add_argument("--out")
    mining.set_defaults(func=cmd_mining)
    prepare = commands.add_parser("prepare", help="the whole `veco2 data prepare`: pairs/s and peak RSS by corpus "
                                                  "size and worker count (the demo corpus cycled)")
    prepare.add_argument("--pairs", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    prepare.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    prepare.add_argument("--chunk-size", type=int, default=50_000)
    prepare.add_argument("--work-dir", help="where the corpora and shards go (default: a temporary directory)")
    prepare.add_argument("--results", default=str(RESULTS), help="directory for the JSON result")
    prepare.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> None:
    from .prepare import format_table, run_prepare_benchmark

    result = run_prepare_benchmark(args.pairs, args.workers, args.work_dir, args.results, args.chunk_size)
    print(format_table(result))
    print(f"written: {result.get('path')}")


def write_report(name: str, args, payload: dict) -> Path:
    out = Path(args.out) if args.out else RESULTS / f"{name}.json"
    load = os.getloadavg()
    record = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv),
              "load_average": [round(x, 2) for x in load], "arguments": {k: v for k, v in vars(args).items() if k != "func"},
              **payload, "provenance": provenance({k: v for k, v in vars(args).items() if k != "func"})}
    write_json(out, record)
    print(f"wrote {out}")
    return out


def _print_table(result: dict) -> None:
    print(f"{'system':<28}{'tokens/s':>11}{'padding':>9}{'MFU':>8}{'peak MiB':>10}")
    for label, r in result["systems"].items():
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        memory = f"{r['peak_memory_mib']:.0f}" if r.get("peak_memory_mib") else "-"
        print(f"{label:<28}{r['tokens_per_s']:>11.0f}{100 * r['padding_share']:>8.1f}%{mfu:>8}{memory:>10}")


def cmd_pretrain(args) -> None:
    from .systems import SystemSpec
    from .timing import compare, ratio_rounds

    specs = [SystemSpec.parse(s, args.variant) for s in args.system] if args.system else [
        SystemSpec("veco2", "veco2", args.variant), SystemSpec("baseline", "baseline", args.variant)]
    result = compare(specs, args)
    labels = list(result["systems"])
    result["ratios"] = {f"{a}/{labels[-1]}": ratio_rounds(result, a, labels[-1]) for a in labels[:-1]}
    _print_table(result)
    for key, value in result["ratios"].items():
        print(f"tokens/s ratio {key}: {value:.2f}x (median of per-round ratios)")
    write_report(args.name or f"pretrain_{result['device']['type']}_{args.size}_{args.variant}_len{args.seq_len}",
                 args, result)


# Late fusion (ablations/extra/late_fusion.yaml): TLM sides apart below the top layer, both
# contrastive terms read the masked main pass (no clean pass).
_LATE_FUSION_TLM = "objectives.mlm.tlm_cross_layers=1"
_LATE_FUSION = (f"{_LATE_FUSION_TLM},objectives.seq.encoding=joint,objectives.seq.layer=-2,"
                "objectives.tok.encoding=joint")
DEFAULT_VARIANTS = [  # the defaults first (ratios are to mlm), then the other encodings of the same objectives
    "mlm=veco2:mlm",
    "mlm_seq_tok=veco2:mlm_seq_tok",
    f"mlm/late_fusion=veco2:mlm:{_LATE_FUSION_TLM}",
    f"mlm_seq_tok/late_fusion=veco2:mlm_seq_tok:{_LATE_FUSION}",
    "mlm_seq_tok/bilingual_separate=veco2:mlm_seq_tok:objectives.mlm.bilingual=separate",
]


def cmd_variants(args) -> None:
    from .systems import SystemSpec
    from .timing import compare, ratio_rounds

    specs = [SystemSpec.parse(s, "mlm") for s in (args.system or DEFAULT_VARIANTS)]
    result = compare(specs, args)
    first = specs[0].label
    result["ratios"] = {f"{s.label}/{first}": ratio_rounds(result, s.label, first) for s in specs[1:]}
    _print_table(result)
    for key, value in result["ratios"].items():
        print(f"tokens/s ratio {key}: {value:.2f}x")
    write_report(args.name or f"variants_{result['device']['type']}_{args.size}", args, result)


def optimization_specs(variant: str) -> list[SystemSpec]:
    from .systems import SystemSpec

    specs = [SystemSpec("veco2", "veco2", variant),
             SystemSpec("bucketing_not_packing", "veco2", variant, ["data.packing=false", "data.bucket_by_length=true"]),
             SystemSpec("no_packing_no_bucketing", "veco2", variant, ["data.packing=false"]),
             SystemSpec("full_vocab_head", "veco2", variant, ["model.sparse_mlm_head=false"]),
             SystemSpec("eager_attention", "veco2", variant, ["model.attn_implementation=eager"])]
    return specs + [SystemSpec("baseline", "baseline", variant)]


def cmd_optimizations(args) -> None:
    from .timing import compare, ratio_rounds

    specs = optimization_specs(args.variant)
    result = compare(specs, args)
    result["ratios"] = {f"veco2/{s.label}": ratio_rounds(result, "veco2", s.label) for s in specs[1:]}
    _print_table(result)
    for key, value in result["ratios"].items():
        print(f"tokens/s ratio {key}: {value:.2f}x")
    write_report(args.name or f"optimizations_{result['device']['type']}_{args.size}_{args.variant}", args, result)


def cmd_retrieval(args) -> None:
    """BUCC mining (margin k-NN both ways + one-to-one selection) in a child process (clean peak RSS)."""
    import torch

    from .timing import device_description, retrieval_child

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=retrieval_child, args=(args.n, args.dim, args.k, args.chunk_size, 0, queue))
    process.start()
    result = queue.get(timeout=24 * 3600)
    process.join()
    result.update({"n": args.n, "dim": args.dim, "k": args.k, "chunk_size": args.chunk_size,
                   "device": device_description(torch.device("cpu"))})
    print(f"mining {args.n} x {args.n} vectors of dim {args.dim}: {result['seconds']:.1f} s, "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB (the vectors alone: {result['vectors_mib']:.0f} MiB)")
    write_report(args.name or f"retrieval_cpu_{args.n}x{args.n}_d{args.dim}", args, result)


def cmd_mining(args) -> None:
    script = Path("benchmarks") / "mining_vs_tokenization.py"
    if not script.exists():
        raise Veco2Error(f"{script}: not found (run from the veco2 checkout: it ships with the source tree)")
    command = [sys.executable, str(script), "--pairs", str(args.pairs), "--repeats", str(args.repeats)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise Veco2Error(f"{script} failed: {completed.stderr.strip().splitlines()[-1] if completed.stderr else ''}")
    output = completed.stdout
    result = json.loads(output[output.index("{"):])
    print(json.dumps(result, indent=2))
    write_report(args.name or f"mining_vs_tokenization_{args.pairs}", args,
                 {"script_command": " ".join(command[1:]), "result": result})


def main(argv: list[str] | None = None) -> int:
    """``python -m veco2.bench ...`` (the same as ``veco2 bench ...``)."""
    from ..cli import main as veco2_main  # its error handling: a Veco2Error exits with status 2

    argv = list(sys.argv[1:] if argv is None else argv)
    return veco2_main(argv if argv[:1] == ["bench"] else ["bench", *argv])

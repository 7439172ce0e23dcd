"""The ``veco2`` command line.

Every sub-command is a thin wrapper over a function of the package, so the Snakemake rules, the
notebooks and the tests call the same code.  User errors (:class:`~veco2.errors.Veco2Error`) are
printed as one line and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path

from .cli_text import plain_text
from .errors import Veco2Error


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="config file(s), later ones override earlier ones (e.g. a scale's pre-training config, then "
                             "an ablation variant)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides such as training.max_steps=100 objectives.seq.weight=0.5")


def _load(args):
    """The :class:`~veco2.config.Config` of ``--config`` files and ``KEY=VALUE`` overrides."""
    from .config import load_config

    return load_config(*args.config, overrides=args.overrides)


def cmd_pretrain(args) -> None:
    from .trainer import pretrain

    cfg = _load(args)
    out = Path(args.out) if args.out else Path("results/pretrain") / cfg.name
    summary = pretrain(cfg, out)
    if summary:
        retrieval = summary["retrieval"]["accuracy"].get("mean")
        print(f"{out}: {summary['steps']} steps, final losses {summary['final_losses']}, "
              f"held-out retrieval accuracy {retrieval if retrieval is None else round(retrieval, 2)}")


def cmd_data_prepare(args) -> None:
    from .trainer import prepare_data

    if args.workers is not None:
        args.overrides = [*args.overrides, f"data.prepare_workers={args.workers}"]
    cfg = _load(args)
    tokenizer, shards = prepare_data(cfg, Path(args.out))
    print(f"{args.out}: tokenizer with {len(tokenizer)} pieces; {shards.num_mono} monolingual and "
          f"{shards.num_bi} bilingual instances in {shards.root}")


def cmd_data_build_demo(args) -> None:
    from .demo import corpus as demo_corpus

    demo_corpus.main(args.rest)


def cmd_data_build_demo_tasks(args) -> None:
    from .demo import tasks as demo_tasks

    demo_tasks.main(args.rest)


class _PrintVersion(argparse.Action):
    """``--version`` on one line (argparse's own version action re-wraps it to the terminal width)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version_line())
        parser.exit()


def _version_line() -> str:
    """``veco2 X.Y.Z (torch ..., transformers ..., accelerate ...)``, read from the installed
    distributions' metadata so that ``--version`` answers without importing torch."""
    from importlib import metadata

    from . import __version__

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in ("torch", "transformers", "accelerate", "datasets"))
    return f"veco2 {__version__} ({libraries})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veco2", description=plain_text(__doc__.splitlines()[0]))
    parser.add_argument("--version", action=_PrintVersion, help="print the versions of veco2 and its main libraries")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--log-level", default=os.environ.get("VECO2_LOG_LEVEL", "INFO"))
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads of this job: torch's intra-op threads, OpenMP/MKL and the tokenizers' "
                             "thread pool (the workflow passes each rule's `threads:`; default: the libraries' own)")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="corpus, tokenizer and shards").add_subparsers(dest="data_command",
                                                                                        required=True)
    prepare = data.add_parser("prepare", help="train/load the tokenizer and build the pre-tokenized shards")
    _config_arguments(prepare)
    prepare.add_argument("--out", required=True, help="directory for tokenizer/ and shards/")
    prepare.add_argument("--workers", type=int, metavar="N",
                         help="processes that tokenize and mine (data.prepare_workers; the shards do not depend on it)")
    prepare.set_defaults(func=cmd_data_prepare)
    for name, func, text in (("build-demo", cmd_data_build_demo, "rebuild the embedded demo corpus from Debian packages"),
                             ("build-demo-tasks", cmd_data_build_demo_tasks, "rebuild the embedded demo XTREME task data")):
        sub = data.add_parser(name, help=text, add_help=False)
        sub.add_argument("rest", nargs=argparse.REMAINDER)
        sub.set_defaults(func=func)

    pretrain = commands.add_parser("pretrain", help="pre-train (or resume) one model variant")
    _config_arguments(pretrain)
    pretrain.add_argument("--out", help="output directory (default results/pretrain/NAME)")
    pretrain.set_defaults(func=cmd_pretrain)

    from .bench import cli as bench_cli
    from .sweep import cli as sweep_cli
    from .report import cli as report_cli
    from .xtreme import cli as xtreme_cli

    xtreme_cli.register(commands)
    report_cli.register(commands)
    sweep_cli.register(commands)
    bench_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        use_threads(args.threads)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except Veco2Error as err:
        if args.debug:
            raise
        print(f"veco2: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # The environment, not a bug: a full disk, a quota, a read-only or forbidden path.  Every
        # write is atomic (veco2.fileio), so the previous versions of the outputs are intact.
        if args.debug or err.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"veco2: error: {where}{err.strerror or err} (previous outputs are left intact)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("veco2: interrupted", file=sys.stderr)
        return 130
    return 0


def use_threads(count: int) -> None:
    """Run this process on ``count`` CPU threads: torch's intra-op pool and, through their
    environment variables (read when the libraries start their pools, so set before any
    tokenization), OpenMP, MKL and the Rust thread pool of Hugging Face ``tokenizers``."""
    if count < 1:
        raise SystemExit(f"veco2: error: --threads {count}: must be at least 1")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "RAYON_RS_NUM_CPUS"):
        os.environ[name] = str(count)
    import torch

    torch.set_num_threads(count)


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


if __name__ == "__main__":
    sys.exit(main())

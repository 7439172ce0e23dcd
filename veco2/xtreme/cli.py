"""``veco2 finetune | evaluate | prefetch``: the XTREME commands.  ``register(subparsers)`` is
called by :mod:`veco2.cli`; each sub-command sets ``func`` to a handler ``(args) -> int``."""

from __future__ import annotations

import argparse
import json
import logging

from .registry import get_task, list_tasks

log = logging.getLogger(__name__)


def _tasks(retrieval: bool) -> list[str]:
    """The registry's fine-tuned (or retrieval) tasks: task files, not a list written here."""
    return [name for name in list_tasks() if (get_task(name).family == "retrieval") == retrieval]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects integers like 1,2,3, got {text!r}") from None


def _language(text: str) -> str:
    if "=" in text:  # --languages takes every word that follows it
        raise argparse.ArgumentTypeError(f"{text!r} is a KEY=VALUE override, not a language; "
                                         "put the overrides before --languages")
    return text


def register(subparsers) -> None:
    """Add the ``finetune``, ``evaluate``, ``trivial`` and ``prefetch`` sub-commands."""
    p = subparsers.add_parser("finetune", help="zero-shot XTREME fine-tuning (classification, tagging, QA)",
                              description="Fine-tune on English, select on the English dev set, predict every "
                                          "test language; writes OUT/TASK/seedS/results.json + predictions.  "
                                          "Runs on accelerate: on a GPU when there is one, on several with "
                                          "`accelerate launch -m veco2.cli finetune ...` (docs/finetuning.md).")
    p.add_argument("--task", required=True, help=" ".join(_tasks(retrieval=False)))
    p.add_argument("--model", required=True,
                   help="pre-trained model: a local directory (Hugging Face format) or a hub name such as "
                        "xlm-roberta-base (downloaded once, then read from the Hugging Face cache)")
    p.add_argument("--out", required=True, help="results root")
    p.add_argument("--seeds", type=_seeds, default=[1, 2, 3], help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--data-root", default=None,
                   help="local XTREME layout (default: $VECO2_XTREME_DATA or the packaged demo data)")
    p.add_argument("--hub", action="store_true", help="read google/xtreme from the Hugging Face hub (network, or $VECO2_HUB_MIRROR)")
    p.add_argument("--languages", nargs="+", default=None, type=_language,
                   help="test languages (default: the official list)")
    p.add_argument("key_value_overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override settings, as `veco2 pretrain` does, in one block, e.g. learning_rate=3e-5 eval_steps=100; "
                        "engine settings: batch_size (global per optimizer step), gradient_accumulation_steps=1, "
                        "eval_batch_size=64, mixed_precision=no|bf16|fp16, save_steps=500, eval_steps, "
                        "logging_steps=10, report_to=none|tensorboard|wandb|..., max_train_examples, "
                        "warmup_steps, weight_decay, max_grad_norm, adam_epsilon (docs/finetuning.md)")
    p.add_argument("--max-steps", type=int, default=None, help="train exactly this many optimisation steps (cycling the training set; default: the task file's epochs)")
    p.add_argument("--translate-train", action="store_true",
                   help="also train on translated train-LANG files of the test languages (translate-train-all)")
    p.set_defaults(func=_finetune)

    p = subparsers.add_parser("evaluate", help="XTREME retrieval (tatoeba, bucc2018) with the pre-trained encoder")
    p.add_argument("--task", required=True, choices=_tasks(retrieval=True))
    p.add_argument("--model", required=True, help="pre-trained model: a local directory or a hub name")
    p.add_argument("--out", required=True, help="results root (writes OUT/TASK/seed0/results.json)")
    p.add_argument("--layer", default=None,
                   help="hidden layer (0 = embeddings; default round(2/3 * layers)); 'all' = sweep every layer")
    p.add_argument("--pooling", default="mean", choices=["mean", "cls"])
    p.add_argument("--batch-size", type=int, default=None,
                   help="sentences per forward pass on the device (default: the task file's 64; raise it on a GPU)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"],
                   help="autocast the encoder (fp16 needs a GPU; default no)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--hub", action="store_true",
                   help="read google/xtreme from the Hugging Face hub (network, or $VECO2_HUB_MIRROR)")
    p.add_argument("--languages", nargs="+", default=None)
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser("trivial", help="score the trivial baseline of a task (majority label, most frequent "
                              "tag, first-k-words span, chance) as results under OUT/TASK/seed0")
    p.add_argument("--task", required=True, choices=list_tasks())
    p.add_argument("--out", required=True, help="results root (the workflow's results/SCALE/xtreme/trivial)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--hub", action="store_true",
                   help="read google/xtreme from the Hugging Face hub (network, or $VECO2_HUB_MIRROR)")
    p.add_argument("--languages", nargs="+", default=None)
    p.set_defaults(func=_trivial)

    p = subparsers.add_parser("prefetch", help="download XTREME tasks into the local layout (networked machine)")
    p.add_argument("--tasks", nargs="+", default=None, help="tasks (default: all nine)")
    p.add_argument("--out", default=None, help="directory to write the layout + manifest.json into")
    p.add_argument("--languages", nargs="+", default=None)
    p.add_argument("--verify", metavar="DIR", default=None, help="check DIR against its manifest.json instead")
    p.set_defaults(func=_prefetch)


def _finetune(args) -> int:
    from .finetune import parse_overrides, run_finetune

    overrides = parse_overrides(args.key_value_overrides)
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    results = run_finetune(args.task, args.model, args.out, seeds=args.seeds, data_root=args.data_root,
                           hub=args.hub, overrides=overrides, languages=args.languages,
                           translate_train=args.translate_train)
    for r in results:
        print(json.dumps({"task": r["task"], "seed": r["seed"], "task_score": round(r["task_score"], 2)}))
    return 0


def _evaluate(args) -> int:
    from ..errors import ConfigError
    from .retrieval_run import run_evaluate

    layer, layers = args.layer, None
    if layer == "all":
        layer, layers = None, "all"
    elif layer is not None:
        try:
            layer = int(layer)
        except ValueError:
            raise ConfigError(f"--layer expects an integer or 'all', got {layer!r}") from None
    r = run_evaluate(args.task, args.model, args.out, layer=layer, layers=layers, pooling=args.pooling,
                     data_root=args.data_root, hub=args.hub, languages=args.languages,
                     batch_size=args.batch_size, mixed_precision=args.mixed_precision)
    print(json.dumps({"task": r["task"], "layer": r["layer"], "task_score": round(r["task_score"], 2),
                      "by_layer": r["task_score_by_layer"]}))
    return 0


def _trivial(args) -> int:
    from .trivial import run_trivial

    r = run_trivial(args.task, args.out, data_root=args.data_root, hub=args.hub, languages=args.languages)
    print(json.dumps({"task": r["task"], "model": "trivial", "task_score": round(r["task_score"], 2)}))
    return 0


def _prefetch(args) -> int:
    from ..errors import ConfigError
    from .prefetch import prefetch, verify

    if args.verify:
        print(f"{verify(args.verify)} files match {args.verify}/manifest.json")
        return 0
    if not args.out:
        raise ConfigError("prefetch needs --out DIR (or --verify DIR)")
    manifest = prefetch(args.tasks, args.out, languages=args.languages)
    print(f"wrote {len(manifest['files'])} files and {args.out}/manifest.json")
    return 0

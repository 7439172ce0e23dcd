"""Does a cheaper encoding of the contrastive terms still align sentences?  (evidence for a default)

Pre-trains several encodings of the mlm_seq_tok variant (and mlm as the floor) and reports the
held-out retrieval accuracy (Tatoeba-style, both directions; the sentences are encoded
separately, as in XTREME) next to the final MLM loss and the throughput each run logged.

``--scale test``: the test-scale model of ``tests/test_pretrain.py`` (2 layers, hidden 32) on a
de/zh slice of the demo corpus, 200 steps, lr 2e-3, retrieval at the last layer.
``--scale demo``: the demo pre-training config (``config/pretrain/demo.yaml``: the 4-layer tiny
model, every demo language) for ``--steps``, retrieval at the default layer (2/3 depth).  The
sequence term pools the retrieval layer unless a run sets ``objectives.seq.layer``.

    python benchmarks/seq_encoding_quality.py --scale demo --steps 400 \
        --out benchmarks/results/seq_encoding_quality_demo_faithful.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402
from conftest import tiny_training_overrides  # noqa: E402

from veco2.config import load_config  # noqa: E402
from veco2.fileio import write_json  # noqa: E402
from veco2.provenance import provenance  # noqa: E402
from veco2.trainer import pretrain  # noqa: E402

PLAIN_TLM = {"objectives.mlm.tlm_cross_layers": None, "objectives.mlm.tlm_reset_positions": False}


def late_fusion(cross: int, reset: bool = True) -> dict:
    """TLM rows whose sides meet only in the top ``cross`` layers; seq pooled just below them and
    tok on the top layer, both from the masked main pass (MLM positions left out): no clean pass."""
    return {"objectives.mlm.tlm_cross_layers": cross, "objectives.mlm.tlm_reset_positions": reset,
            "objectives.seq.encoding": "joint", "objectives.seq.layer": -(cross + 1),
            "objectives.tok.encoding": "joint"}


TEST_RUNS = {  # label: (variant, overrides), every option that differs from the defaults spelled out
    "mlm (default: XLM TLM, every layer, reset positions)": ("mlm", {}),
    "mlm (late-fusion TLM: 1 cross layer)": ("mlm", {"objectives.mlm.tlm_cross_layers": 1}),
    "mlm_seq_tok (default: XLM TLM; seq + tok on the clean separate sides, seq at the retrieval layer)":
        ("mlm_seq_tok", {}),
    "mlm_seq_tok (late fusion: 1 cross layer, seq joint at -2, tok joint)": ("mlm_seq_tok", late_fusion(1)),
    "mlm_seq_tok (plain TLM, seq + tok joint at the retrieval layer: shortcut)":
        ("mlm_seq_tok", {**PLAIN_TLM, "objectives.seq.encoding": "joint", "objectives.tok.encoding": "joint"}),
}
DEMO_RUNS = {
    **TEST_RUNS,
    "mlm_seq_tok (late fusion: 2 cross layers, seq joint at -3, tok joint)": ("mlm_seq_tok", late_fusion(2)),
}


def make_corpus(out: Path) -> Path:
    import conftest

    class Factory:
        def mktemp(self, name):
            out.mkdir(parents=True, exist_ok=True)
            return out

    return conftest.small_corpus_dir.__wrapped__(Factory())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["test", "demo"], default="test")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--corpus", help="demo scale: a corpus directory (default: the embedded demo corpus)")
    parser.add_argument("--runs", nargs="+", help="labels to run (default: all of the scale)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "seq_encoding_quality_faithful.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="veco2-seq-quality-"))
    shared = {"training.max_steps": args.steps, "training.checkpoint_every": 10_000, "training.log_every": 10}
    prepared = {"data.tokenizer": str(work / "data" / "tokenizer"), "data.shard_dir": str(work / "data" / "shards")}
    if args.scale == "test":
        corpus = make_corpus(work / "corpus")
        shared.update({"training.warmup_steps": 20, "training.lr": 2e-3, "evaluation.retrieval_layer": -1})
        pretrain_configs, runs = [], TEST_RUNS

        def overrides(**extra):
            return tiny_training_overrides(corpus, **shared, **{k: "null" if v is None else v for k, v in extra.items()})
    else:
        pretrain_configs, runs = [REPO / "config" / "pretrain" / "demo.yaml"], DEMO_RUNS
        shared.update({"training.tensorboard": False, **({"data.corpus": args.corpus} if args.corpus else {})})

        def overrides(**extra):
            return [f"{k}={'null' if v is None else v}" for k, v in {**shared, **extra}.items()]
    runs = {label: runs[label] for label in (args.runs or runs)}
    from veco2.trainer import prepare_data

    prepare_data(load_config(*pretrain_configs, REPO / "ablations" / "mlm.yaml", overrides=overrides()), work / "data")
    results = {}
    for label, (variant, extra) in runs.items():
        cfg = load_config(*pretrain_configs, REPO / "ablations" / f"{variant}.yaml", overrides=overrides(**prepared, **extra))
        summary = pretrain(cfg, work / "".join(c if c.isalnum() else "_" for c in label))
        results[label] = {"retrieval_accuracy": summary["retrieval"]["accuracy"],
                          "retrieval_layer": summary["retrieval"]["layer"],
                          "median_tokens_per_s": summary["median_tokens_per_s"],
                          "final_losses": summary["final_losses"], "overrides": extra, "variant": variant}
        print(f"{label:<55} retrieval {summary['retrieval']['accuracy']['mean']:6.2f}  "
              f"mlm {summary['final_losses'].get('loss_mlm', float('nan')):6.3f}  "
              f"tokens/s {summary['median_tokens_per_s']:8.0f}", flush=True)
    write_json(args.out, {"scale": args.scale, "steps": args.steps, "threads": args.threads, "runs": results,
                          "command": "python " + " ".join(sys.argv), "provenance": provenance()})


if __name__ == "__main__":
    main()

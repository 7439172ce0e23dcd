"""Does a cheaper encoding of the contrastive terms still align sentences?  (evidence for a default)

Pre-trains the tiny test-scale model (as ``tests/test_pretrain.py``'s 200-step test: corpus slice
of de/zh, 400 pairs each, 200 steps, lr 2e-3) for several encodings of the mlm_seq_tok variant
and reports the held-out retrieval accuracy (Tatoeba-style, both directions, last layer; the
sentences are encoded separately, as in XTREME) next to the throughput each run logged.

    python benchmarks/seq_encoding_quality.py --out benchmarks/results/seq_encoding_quality.json
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

RUNS = {
    "mlm": ("mlm", {}),
    "mlm_seq_tok (seq separate: clean pass)": ("mlm_seq_tok", {}),
    "mlm_seq_tok (seq joint: TLM rows)": ("mlm_seq_tok", {"objectives.seq.encoding": "joint"}),
    "mlm_seq_tok (bilingual separate)": ("mlm_seq_tok", {"objectives.mlm.bilingual": "separate",
                                                         "objectives.tok.encoding": "separate"}),
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
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "seq_encoding_quality.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="veco2-seq-quality-"))
    corpus = make_corpus(work / "corpus")
    shared = {"training.max_steps": args.steps, "training.warmup_steps": 20, "training.lr": 2e-3,
              "training.checkpoint_every": 10_000, "training.log_every": 10, "evaluation.retrieval_layer": -1,
              "data.tokenizer": str(work / "data" / "tokenizer"), "data.shard_dir": str(work / "data" / "shards")}
    from veco2.trainer import prepare_data

    prepare_data(load_config("ablations/mlm.yaml", overrides=tiny_training_overrides(corpus)), work / "data")
    results = {}
    for label, (variant, extra) in RUNS.items():
        cfg = load_config(REPO / "ablations" / f"{variant}.yaml",
                          overrides=tiny_training_overrides(corpus, **shared, **extra))
        summary = pretrain(cfg, work / label.replace(" ", "_").replace(":", "").replace("(", "").replace(")", ""))
        results[label] = {"retrieval_accuracy": summary["retrieval"]["accuracy"],
                          "median_tokens_per_s": summary["median_tokens_per_s"],
                          "final_losses": summary["final_losses"], "overrides": extra, "variant": variant}
        print(f"{label:<45} retrieval {summary['retrieval']['accuracy']['mean']:6.2f}  "
              f"tokens/s {summary['median_tokens_per_s']:8.0f}", flush=True)
    write_json(args.out, {"steps": args.steps, "threads": args.threads, "runs": results,
                          "command": "python " + " ".join(sys.argv), "provenance": provenance()})


if __name__ == "__main__":
    main()

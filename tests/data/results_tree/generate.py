"""Write the small synthetic results tree used by tests/test_report.py (run from anywhere:
``python tests/data/results_tree/generate.py``; it rewrites the tree next to this file).

Every value is chosen so the report's numbers can be computed by hand:

    value(variant, task, seed, lang) = BASE[task] + OFFSET[variant] + SEED_SHIFT[seed] * SPREAD[variant]
                                       + LANG_SHIFT[lang]

- seeds 1, 2, 3 shift by -1, 0, +1 times SPREAD -> mean = BASE + OFFSET, sample std = SPREAD;
- language shifts: en +6, second language -2, third -4 -> they average to 0, so the task mean is
  BASE + OFFSET; mean of the non-English languages = BASE + OFFSET - 3, transfer gap = 9;
- QA: f1 = value, exact_match = value - 10 -> task score = value - 5;
- retrieval (bucc2018, tatoeba): one run, seed0, languages (de, fr) / (de, es) shifted -2 / +2 ->
  task score = BASE + OFFSET, no std; scores by layer 0..2 = score - 10, score - 5, score (layer 2 is
  the headline layer);
- task scores of mlm: 70 80 75 60 61 51 47 40 38 -> XTREME 522 / 9 = 58.0; its per-seed std is
  7/9 * SPREAD (seven fine-tuned tasks move with the seed, the two retrieval tasks do not).

Pre-training: median tokens/s 1000 / 800 / 500 / 400 -> relative cost 1, 1.25, 2, 2.5; benchmark
wall time 100 / 125 / 200 / 250 s and max_rss 2000 / 2100 / 2200 / 2300 MB.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent

BASE = {"xnli": 70, "pawsx": 80, "udpos": 75, "panx": 60, "xquad": 66, "mlqa": 56, "tydiqa": 52, "bucc2018": 40,
        "tatoeba": 38}  # fmt: skip  (QA bases are the F1; EM = F1 - 10)
OFFSET = {"mlm": 0.0, "mlm_seq": 2.0, "mlm_tok": 1.5, "mlm_seq_tok": 3.0}
SPREAD = {"mlm": 1.0, "mlm_seq": 1.0, "mlm_tok": 2.0, "mlm_seq_tok": 0.5}
SEED_SHIFT = {1: -1, 2: 0, 3: 1}
LANGS = {"tydiqa": ("en", "ar", "ru"), "bucc2018": ("de", "fr"), "tatoeba": ("de", "es")}
DEFAULT_LANGS = ("en", "de", "es")
LANG_SHIFT = [6.0, -2.0, -4.0]
RETRIEVAL_SHIFT = [-2.0, 2.0]
METRIC = {"xnli": "accuracy", "pawsx": "accuracy", "udpos": "f1", "panx": "f1", "bucc2018": "f1",
          "tatoeba": "accuracy"}  # fmt: skip
TOKENS_PER_S = {"mlm": 1000.0, "mlm_seq": 800.0, "mlm_tok": 500.0, "mlm_seq_tok": 400.0}
WALL_S = {"mlm": 100.0, "mlm_seq": 125.0, "mlm_tok": 200.0, "mlm_seq_tok": 250.0}
MAX_RSS = {"mlm": 2000.0, "mlm_seq": 2100.0, "mlm_tok": 2200.0, "mlm_seq_tok": 2300.0}

PROVENANCE = {"git_commit": "0123456789abcdef0123456789abcdef01234567", "host": "synthetic",
              "versions": {"python": "3.11.2", "veco2": "0.1.0", "torch": "2.13.0", "transformers": "5.0.0"}}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")


def _scores(task: str, value: float, langs) -> dict:
    if task in ("xquad", "mlqa", "tydiqa"):
        return {lang: {"f1": value + s, "exact_match": value + s - 10} for lang, s in zip(langs, LANG_SHIFT)}
    shifts = RETRIEVAL_SHIFT if task in ("bucc2018", "tatoeba") else LANG_SHIFT
    return {lang: {METRIC[task]: value + s} for lang, s in zip(langs, shifts)}


def main() -> None:
    for part in ("xtreme", "pretrain", "benchmarks", "sweeps"):
        shutil.rmtree(HERE / part, ignore_errors=True)
    for variant in OFFSET:
        for task, base in BASE.items():
            langs = LANGS.get(task, DEFAULT_LANGS)
            retrieval = task in ("bucc2018", "tatoeba")
            for seed in ([0] if retrieval else SEED_SHIFT):
                value = base + OFFSET[variant] + (0 if retrieval else SEED_SHIFT[seed] * SPREAD[variant])
                record = {"task": task, "version": "synthetic", "languages": list(langs), "seed": seed,
                          "scores": _scores(task, value, langs), "run_hash": f"{variant}-{task}-{seed}",
                          "provenance": {**PROVENANCE, "config_hash": f"cfg-{variant}"}}
                if retrieval:
                    record["layer"] = 2
                    record["scores_by_layer"] = {str(layer): _scores(task, value - 5 * (2 - layer), langs)
                                                 for layer in range(3)}
                    record["task_score_by_layer"] = {str(layer): value - 5 * (2 - layer) for layer in range(3)}
                _write(HERE / "xtreme" / variant / task / f"seed{seed}" / "results.json", record)

        steps = [10, 20, 30, 40]
        metrics = []
        for i, step in enumerate(steps):
            record = {"step": step, "loss_mlm": 8.0 - i, "lr": 1e-4, "grad_norm": 1.0,
                      "tokens_per_s": TOKENS_PER_S[variant], "steps_per_s": 2.0, "padding_share": 0.1,
                      "tokens_seen": 1000 * step}
            if "seq" in variant:
                record["loss_seq"] = 4.0 - 0.5 * i
            if "tok" in variant:
                record["loss_tok"] = 3.0 - 0.5 * i
            record["loss"] = sum(v for k, v in record.items() if k.startswith("loss_"))
            metrics.append(record)
        pre = HERE / "pretrain" / variant
        pre.mkdir(parents=True, exist_ok=True)
        (pre / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics), encoding="utf-8")
        _write(pre / "summary.json", {
            "name": variant, "steps": 40, "tokens": 40000, "median_tokens_per_s": TOKENS_PER_S[variant],
            "median_steps_per_s": 2.0, "final_losses": {k: v for k, v in metrics[-1].items() if k.startswith("loss")},
            "retrieval": {"layer": 2, "pooling": "mean", "accuracy": {"mean": 50.0}},
            "config": {"name": variant, "objectives": {"seq": {"weight": 1.0 if "seq" in variant else 0.0},
                                                       "tok": {"weight": 1.0 if "tok" in variant else 0.0}}},
            "provenance": {**PROVENANCE, "config_hash": f"cfg-{variant}"}})
        bench = HERE / "benchmarks" / "pretrain" / f"{variant}.tsv"
        bench.parent.mkdir(parents=True, exist_ok=True)
        wall = WALL_S[variant]
        bench.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                         f"{wall:.4f}\t0:{int(wall) // 60:02d}:{int(wall) % 60:02d}\t{MAX_RSS[variant]:.2f}\t4000.00"
                         f"\t1900.00\t1950.00\t10.00\t5.00\t95.00\t{wall * 0.95:.2f}\n", encoding="utf-8")

    study = HERE / "sweeps" / "seq_weight"
    study.mkdir(parents=True, exist_ok=True)
    (study / "trials.csv").write_text(
        "number,value,state,params_objectives.seq.weight,params_objectives.seq.temperature\n"
        "0,55.0,COMPLETE,0.1,0.05\n1,57.5,COMPLETE,0.5,0.1\n2,,FAIL,1.0,0.2\n3,56.0,COMPLETE,1.0,0.05\n"
        "4,58.5,COMPLETE,0.7,0.1\n", encoding="utf-8")


if __name__ == "__main__":
    main()

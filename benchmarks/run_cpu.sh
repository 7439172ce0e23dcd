#!/usr/bin/env bash
# Every CPU figure of benchmarks/RESULTS.md, in the order of its tables (about 1-2 hours on 2 cores).
# Results land in benchmarks/results/*.json; each file records its command, date, commit and load.
set -euo pipefail
cd "$(dirname "$0")/.."
VECO2="${VECO2:-.venv/bin/python -m veco2.bench}"

# (a) veco2 vs (b) the plain HF baseline: small model, 32k vocabulary, mlm_seq_tok, demo corpus.
$VECO2 pretrain --size small --vocab-size 32000 --variant mlm_seq_tok --seq-len 64 --batch-size 32 \
    --steps 2 --warmup 1 --repeats 5 --name pretrain_cpu_small_mlm_seq_tok
# Cost of the contrastive objectives: mlm vs mlm_seq_tok (default and cheaper encodings), one run.
$VECO2 variants --size small --vocab-size 32000 --seq-len 64 --batch-size 32 --threads 1 \
    --steps 2 --warmup 1 --repeats 11 --no-memory --name variants_cpu_small_faithful
# Each optimisation switched off alone.
$VECO2 optimizations --size small --vocab-size 32000 --variant mlm_seq_tok --seq-len 64 --batch-size 32 \
    --steps 1 --warmup 1 --repeats 3 --no-memory --name optimizations_cpu_small_mlm_seq_tok
# Does a cheaper encoding of the contrastive terms still align sentences? (test-scale and demo-scale tiny models)
.venv/bin/python benchmarks/seq_encoding_quality.py --scale test --steps 200 --out benchmarks/results/seq_encoding_quality_faithful.json
.venv/bin/python benchmarks/seq_encoding_quality.py --scale demo --steps 400 --out benchmarks/results/seq_encoding_quality_demo_faithful.json
# BUCC-scale mining of 100k x 100k sentence vectors.
$VECO2 retrieval --n 100000 --dim 256 --name retrieval_cpu_100000x100000_d256
# Synonym mining vs plain tokenization of 1M parallel pairs.
$VECO2 mining --pairs 1000000 --repeats 3 --name mining_vs_tokenization_1000000

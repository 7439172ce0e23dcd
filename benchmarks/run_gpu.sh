#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md (one H100/H200/A100; a few minutes each).
# base size, XLM-R's 250k vocabulary, mlm_seq_tok, bf16 autocast + fused AdamW + SDPA + packing for veco2,
# synthetic token ids with lengths in [seq/2, seq] (the demo corpus has no 512-token sentences).
set -euo pipefail
cd "$(dirname "$0")/.."
VECO2="${VECO2:-python -m veco2.bench}"
COMMON="--data synthetic --size base --vocab-size 250002 --variant mlm_seq_tok --steps 10 --warmup 5 --repeats 5"
$VECO2 pretrain $COMMON --seq-len 128 --batch-size 128 --name pretrain_gpu_base_mlm_seq_tok_len128 "$@"
$VECO2 pretrain $COMMON --seq-len 512 --batch-size 32 --name pretrain_gpu_base_mlm_seq_tok_len512 "$@"
# The same with torch.compile (veco2 only).
$VECO2 pretrain $COMMON --seq-len 512 --batch-size 32 --compile --name pretrain_gpu_base_mlm_seq_tok_len512_compile "$@"
$VECO2 optimizations $COMMON --seq-len 512 --batch-size 32 --name optimizations_gpu_base_mlm_seq_tok_len512 "$@"

# Pre-training: one job per variant (ablations/*.yaml).
#
# Resume: the rolling checkpoints live in resources/{scale}/checkpoints/{variant}/{config hash}/,
# outside the declared outputs, so Snakemake never deletes them: a killed or timed-out job that
# is started again (--rerun-incomplete, --retries, a Slurm requeue) continues from the last
# checkpoint.  The declared outputs are the final model, its summary and the DONE marker that the
# trainer writes last.  metrics.jsonl is deliberately not an output (Snakemake would delete it
# before the resumed run appends to it).


rule pretrain:
    input:
        preset=PRESET,
        ablation=lambda wildcards: ablation_file(wildcards.variant),
        tokenizer=TOKENIZER_DIR if TRAIN_TOKENIZER else [],
        shards=SHARD_MANIFEST,
    output:
        model=directory(f"{RESULTS}/pretrain/{{variant}}/model"),
        summary=f"{RESULTS}/pretrain/{{variant}}/summary.json",
        done=f"{RESULTS}/pretrain/{{variant}}/DONE",
    params:
        out=lambda wildcards, output: os.path.dirname(output.done),
        overrides=pretrain_args,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/pretrain/{{variant}}.log",
    benchmark:
        f"{BENCH}/pretrain/{{variant}}.tsv"
    shell:
        "python -m veco2.devices -- veco2 pretrain --config {input.preset:q} --config {input.ablation:q}"
        " --out {params.out:q} {params.overrides:q} > {log:q} 2>&1"

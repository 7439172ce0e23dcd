# Pre-training: one job per variant (ablations/*.yaml).
#
# Resume: the rolling checkpoints live in resources/{scale}/checkpoints/{variant}/{config hash}/,
# outside the declared outputs, so Snakemake never deletes them: a killed or timed-out job that
# is started again (--rerun-incomplete, --retries, a Slurm requeue) continues from the last
# checkpoint.  The declared outputs are the final model, its summary and the DONE marker that the
# trainer writes last.  metrics.jsonl is deliberately not an output (Snakemake would delete it
# before the resumed run appends to it).
#
# GPUs: a job that the profile gives several (`gpu: N`, or Slurm's `gres: gpu:N`) runs under
# `accelerate launch --num_processes N` (DDP, common.smk `launcher`); `training.batch_size` is per
# process, so the global batch is batch_size x grad_accum x N (logged at the start of training).


rule pretrain:
    input:
        pretrain_config=PRETRAIN_CONFIG,
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
        launch=launcher,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/pretrain/{{variant}}.log",
    benchmark:
        f"{BENCH}/pretrain/{{variant}}.tsv"
    shell:
        "{params.launch:q} --threads {threads} pretrain --config {input.pretrain_config:q} --config {input.ablation:q}"
        " --out {params.out:q} {params.overrides:q} > {log:q} 2>&1"

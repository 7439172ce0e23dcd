# Data: the pre-training tokenizer and shards (once per scale, shared by every variant) and, for
# real runs, the XTREME task data fetched once on a networked login node.

# Downloads need the network, which compute nodes often lack: run it where Snakemake runs.
localrules:
    prefetch_xtreme,


rule prepare_data:
    """Train the tokenizer (once per scale: the Unigram trainer is not bit-reproducible across
    runs, so it is never retrained per variant) and build the pre-tokenized shards.  The pre-training config
    is not an input: editing its training section must not retrain the tokenizer.  The resolved
    `data` section is a param instead, so a change of the data settings (and only that) re-runs
    this job and everything after it."""
    output:
        **({"tokenizer": directory(TOKENIZER_DIR)} if TRAIN_TOKENIZER else {}),
        manifest=SHARD_MANIFEST,
    params:
        out=lambda wildcards, output: os.path.dirname(os.path.dirname(output.manifest)),
        pretrain_config=lambda wildcards: PRETRAIN_CONFIG,
        # functions, not strings: a source path's "{lang}" is veco2's placeholder, not a wildcard
        overrides=lambda wildcards: override_args(DATA_OVERRIDES),
        data_settings=lambda wildcards: DATA_SETTINGS,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/prepare_data/{SCALE}.log",
    benchmark:
        f"{BENCH}/prepare_data/{SCALE}.tsv"
    shell:
        "veco2 --threads {threads} data prepare --config {params.pretrain_config:q} --out {params.out:q} {params.overrides:q} > {log:q} 2>&1"


rule prefetch_xtreme:
    """Download the XTREME tasks into the local layout (networked; xtreme.source: prefetch)."""
    output:
        manifest=f"{XTREME_ROOT}/manifest.json" if XTREME_ROOT else "resources/xtreme/manifest.json",
    params:
        out=lambda wildcards, output: os.path.dirname(output.manifest),
        tasks=TASKS,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/prefetch_xtreme/prefetch.log",
    benchmark:
        f"{BENCH}/prefetch_xtreme/prefetch.tsv"
    shell:
        "veco2 prefetch --tasks {params.tasks:q} --out {params.out:q} > {log:q} 2>&1"

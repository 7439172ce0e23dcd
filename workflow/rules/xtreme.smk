# XTREME: zero-shot fine-tuning (one job per model x task x seed, which spreads well over a
# cluster) and retrieval with the pre-trained encoder (one job per model x task).  A model is a
# pre-trained variant or a baseline (config `baselines:`, a hub name or a directory).  A job that
# the profile gives several GPUs runs under `accelerate launch` (DDP; common.smk `launcher`).


rule finetune:
    input:
        unpack(model_inputs),
        data=xtreme_data_input,
    output:
        f"{RESULTS}/xtreme/{{variant}}/{{task}}/seed{{seed}}/results.json",
    wildcard_constraints:
        task="|".join(FINETUNE_TASKS) or "(?!)",
        variant=f"(?!{TRIVIAL}/)[^/]+",
    params:
        out=lambda wildcards: f"{RESULTS}/xtreme/{wildcards.variant}",
        model=model_arg,
        launch=launcher,
        args=finetune_args,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/finetune/{{variant}}/{{task}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/finetune/{{variant}}/{{task}}/seed{{seed}}.tsv"
    shell:
        "{params.launch:q} --threads {threads} finetune --task {wildcards.task:q} --model {params.model:q}"
        " --seeds {wildcards.seed:q} --out {params.out:q} {params.args:q} > {log:q} 2>&1"


rule evaluate_retrieval:
    """Tatoeba / BUCC: scores every layer (`retrieval.layer: all`) for the accuracy-by-layer plot;
    the headline score uses the default layer."""
    input:
        unpack(model_inputs),
        data=xtreme_data_input,
    output:
        f"{RESULTS}/xtreme/{{variant}}/{{task}}/seed{RETRIEVAL_SEED}/results.json",
    wildcard_constraints:
        task="|".join(RETRIEVAL_TASKS) or "(?!)",
        variant=f"(?!{TRIVIAL}/)[^/]+",
    params:
        out=lambda wildcards: f"{RESULTS}/xtreme/{wildcards.variant}",
        model=model_arg,
        launch=launcher,
        args=evaluate_args,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/evaluate_retrieval/{{variant}}/{{task}}.log",
    benchmark:
        f"{BENCH}/evaluate_retrieval/{{variant}}/{{task}}.tsv"
    shell:
        "{params.launch:q} --threads {threads} evaluate --task {wildcards.task:q} --model {params.model:q}"
        " --out {params.out:q} {params.args:q} > {log:q} 2>&1"


rule trivial_baseline:
    """What a model that learned nothing scores (majority label, most frequent tag, first-k-words
    span, chance; veco2.xtreme.trivial): one job per task, no model."""
    input:
        data=xtreme_data_input,
    output:
        f"{RESULTS}/xtreme/{TRIVIAL}/{{task}}/seed{RETRIEVAL_SEED}/results.json",
    params:
        out=lambda wildcards: f"{RESULTS}/xtreme/{TRIVIAL}",
        args=lambda wildcards: data_args(wildcards.task),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/trivial_baseline/{{task}}.log",
    benchmark:
        f"{BENCH}/trivial_baseline/{{task}}.tsv"
    shell:
        "veco2 --threads {threads} trivial --task {wildcards.task:q} --out {params.out:q} {params.args:q} > {log:q} 2>&1"

# XTREME: zero-shot fine-tuning (one job per variant x task x seed, which spreads well over a
# cluster) and retrieval with the pre-trained encoder (one job per variant x task).


rule finetune:
    input:
        model=f"{RESULTS}/pretrain/{{variant}}/model",
        done=f"{RESULTS}/pretrain/{{variant}}/DONE",
        data=xtreme_data_input,
    output:
        f"{RESULTS}/xtreme/{{variant}}/{{task}}/seed{{seed}}/results.json",
    wildcard_constraints:
        task="xnli|pawsx|udpos|panx|xquad|mlqa|tydiqa",
    params:
        out=lambda wildcards: f"{RESULTS}/xtreme/{wildcards.variant}",
        args=finetune_args,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/finetune/{{variant}}/{{task}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/finetune/{{variant}}/{{task}}/seed{{seed}}.tsv"
    shell:
        "python -m veco2.devices -- veco2 finetune --task {wildcards.task:q} --model {input.model:q}"
        " --seeds {wildcards.seed:q} --out {params.out:q} {params.args:q} > {log:q} 2>&1"


rule evaluate_retrieval:
    """Tatoeba / BUCC: scores every layer (`retrieval.layer: all`) for the accuracy-by-layer plot;
    the headline score uses the default layer."""
    input:
        model=f"{RESULTS}/pretrain/{{variant}}/model",
        done=f"{RESULTS}/pretrain/{{variant}}/DONE",
        data=xtreme_data_input,
    output:
        f"{RESULTS}/xtreme/{{variant}}/{{task}}/seed{RETRIEVAL_SEED}/results.json",
    wildcard_constraints:
        task="tatoeba|bucc2018",
    params:
        out=lambda wildcards: f"{RESULTS}/xtreme/{wildcards.variant}",
        args=evaluate_args,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/evaluate_retrieval/{{variant}}/{{task}}.log",
    benchmark:
        f"{BENCH}/evaluate_retrieval/{{variant}}/{{task}}.tsv"
    shell:
        "python -m veco2.devices -- veco2 evaluate --task {wildcards.task:q} --model {input.model:q}"
        " --out {params.out:q} {params.args:q} > {log:q} 2>&1"

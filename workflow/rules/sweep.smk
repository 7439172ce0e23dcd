# Optuna sweeps (not part of `rule all`): `snakemake sweep_all` (or a study's best.yaml as target).
#
# Each study of config `sweep.studies` runs `workers` worker jobs in parallel that share one Optuna
# journal file, results/{scale}/sweeps/{study}/optuna-journal.log (file-locked; for workers on
# several nodes pass a PostgreSQL URL with `args: [--storage, URL]` instead).  A worker is
# restartable: `--worker wN` gives it a fixed name and `--trials` is a quota per name, so a
# restarted worker completes its own quota instead of adding trials.  When all workers are
# done, `sweep_best` writes best.yaml -- a ready ablation file: copy it into ablations/ and the
# next `snakemake` run adds it as a variant.

rule sweep_worker:
    input:
        config=lambda wildcards: repo_path(sweep_study(wildcards)["config"]),
    output:
        touch(f"{RESULTS}/sweeps/{{study}}/workers/w{{worker}}.done"),
    params:
        args=sweep_args,
        storage=sweep_storage,
        trials=sweep_trials,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/sweep_worker/{{study}}/w{{worker}}.log",
    benchmark:
        f"{BENCH}/sweep_worker/{{study}}/w{{worker}}.tsv"
    shell:
        # --storage first: a study's own `args: [--storage, URL]` comes later and wins.
        "python -m veco2.devices -- veco2 --threads {threads} sweep --storage {params.storage:q} {params.args:q}"
        " --trials {params.trials:q} --worker w{wildcards.worker:q} > {log:q} 2>&1"


rule sweep_best:
    """After every worker: best.yaml (the best trial as an ablation file), trials.csv, plots."""
    input:
        config=lambda wildcards: repo_path(sweep_study(wildcards)["config"]),
        workers=lambda wildcards: expand(
            f"{RESULTS}/sweeps/{wildcards.study}/workers/w{{worker}}.done",
            worker=range(sweep_study(wildcards)["workers"]),
        ),
    output:
        best=f"{RESULTS}/sweeps/{{study}}/best.yaml",
        trials=report(f"{RESULTS}/sweeps/{{study}}/trials.csv", caption="../report/sweep.rst", category="Sweeps"),
    params:
        args=sweep_args,
        storage=sweep_storage,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/sweep_best/{{study}}.log",
    benchmark:
        f"{BENCH}/sweep_best/{{study}}.tsv"
    shell:
        "veco2 --threads {threads} sweep --storage {params.storage:q} {params.args:q} --report-only > {log:q} 2>&1"


rule sweep_all:
    input:
        expand(f"{RESULTS}/sweeps/{{study}}/best.yaml", study=list(SWEEPS)),

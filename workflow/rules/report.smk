# Aggregation: the tables and plots of one scale (veco2 report), marked for `snakemake --report`.


rule report:
    input:
        done=expand(f"{RESULTS}/pretrain/{{variant}}/DONE", variant=VARIANTS),
        results=xtreme_results(),
    output:
        html=report(f"{RESULTS}/report/report.html", caption="../report/report_html.rst", category="Report"),
        tables=report(
            directory(f"{RESULTS}/report/tables"),
            patterns=["{name}.csv"],
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "{name}"},
        ),
        figures=report(
            directory(f"{RESULTS}/report/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    params:
        results=lambda wildcards, output: os.path.dirname(os.path.dirname(output.html)),
        out=lambda wildcards, output: os.path.dirname(output.html),
        reference=config["report"]["reference"],
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/report/{SCALE}.log",
    benchmark:
        f"{BENCH}/report/{SCALE}.tsv"
    shell:
        "veco2 --threads {threads} report {params.results:q} --out {params.out:q} --reference {params.reference:q} > {log:q} 2>&1"

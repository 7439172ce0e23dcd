# veco2: the full study as one DAG -- data and tokenizer, pre-training of every ablation variant,
# XTREME fine-tuning/evaluation of every variant x task x seed, tables and plots.
#
#   snakemake --cores all                                           # demo scale (the default config)
#   snakemake --workflow-profile profiles/slurm --configfile config/base.yaml
#   snakemake --report report.html                                 # after a run
#
# Usage, scales and job counts: docs/workflow.md.  All logic lives in the veco2 package; the
# rules only call its command line.

from snakemake.utils import min_version, validate

min_version("8.20")


# The demo config is the default ONLY when no --configfile is given: a `configfile:` directive
# would be deep-merged under every --configfile, so base/large would inherit the demo's step
# counts and fine-tuning caps.  Each scale file is complete on its own (tests/test_workflow.py).
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/demo.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/xtreme.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/sweep.smk"


rule all:
    default_target: True
    input:
        final_targets(),

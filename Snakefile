# tpwng: TPWNG weakly supervised video anomaly detection as a Snakemake DAG.
# Targets: results/{dataset}_auc.json, results/{dataset}_ap.json, results/{dataset}_metrics.tsv,
# features/{dataset}/features.h5, models/{dataset}/tpwng.pt, results/{dataset}_reproduction.tsv
# (over train.seeds). `snakemake --cores 2` runs the demo.

configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/seeds.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/ablations.smk"
include: "workflow/rules/viewer.smk"


rule all:
    input:
        demo_targets("synthetic"),
    default_target: True

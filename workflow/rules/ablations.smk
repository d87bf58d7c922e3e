# The paper's ablations (tpwng/resources/ablations.yaml) as DAG branches: one model per variant
# (models/{dataset}/ablations/{variant}/tpwng.pt), trained, scored and evaluated by the same
# commands as the main model on the same feature store, with the variant's settings (the
# dataset's, model overrides merged). A variant whose settings equal the dataset's own reads
# the main model's metrics; variants with equal settings share the first one's branch.
import re

from tpwng.evaluate import ablations

ABLATION_TABLES = list(ablations.tables())


wildcard_constraints:
    table="|".join(map(re.escape, ABLATION_TABLES)),
    variant="|".join(map(re.escape, ablations.variants())),


use rule train as train_variant with:
    output:
        model="models/{dataset}/ablations/{variant}/tpwng.pt",
        log="models/{dataset}/ablations/{variant}/train_log.tsv",
    params:
        settings=lambda w: ablations.settings_json(ds(w.dataset), w.variant, "train"),
    log:
        "logs/{dataset}/ablations/{variant}/train.log",


use rule infer as infer_variant with:
    input:
        manifest="data/{dataset}/manifest.tsv",
        features="features/{dataset}/features.h5",
        shards=feature_inputs,
        model="models/{dataset}/ablations/{variant}/tpwng.pt",
    output:
        "results/{dataset}/ablations/{variant}/scores.h5",
    params:
        settings=lambda w: ablations.settings_json(ds(w.dataset), w.variant, "infer"),
    log:
        "logs/{dataset}/ablations/{variant}/infer.log",


use rule evaluate as evaluate_variant with:
    input:
        manifest="data/{dataset}/manifest.tsv",
        scores="results/{dataset}/ablations/{variant}/scores.h5",
        model="models/{dataset}/ablations/{variant}/tpwng.pt",
    output:
        auc="results/{dataset}/ablations/{variant}_auc.json",
        ap="results/{dataset}/ablations/{variant}_ap.json",
        table="results/{dataset}/ablations/{variant}_metrics.tsv",
        full="results/{dataset}/ablations/{variant}_metrics.json",
        curves="results/{dataset}/ablations/{variant}/plots/score_curves.png",
        roc="results/{dataset}/ablations/{variant}/plots/roc_pr.png",
    params:
        settings=lambda w: ablations.settings_json(ds(w.dataset), w.variant, "evaluate"),
        prefix=lambda w, output: output.full.removesuffix("_metrics.json"),
    log:
        "logs/{dataset}/ablations/{variant}/evaluate.log",


rule ablation_table:
    """One ablation table: our metric per variant beside the paper's numbers, and its plot."""
    input:
        # each row's metrics, in row order; the main model's where the settings are its own
        lambda w: [
            f"results/{w.dataset}/ablations/{b}_metrics.json" if b else
            f"results/{w.dataset}_metrics.json"
            for b in ablations.row_branches(ds(w.dataset), w.table)
        ],
    output:
        table=report(
            "results/{dataset}/ablations/{table}.tsv",
            caption="../report/ablation_table.rst",
            category="Ablations",
            subcategory="{dataset}",
            labels={"table": "{table}", "file": "table (TSV)"},
        ),
        plot=report(
            "results/{dataset}/ablations/{table}.png",
            caption="../report/ablation_plot.rst",
            category="Ablations",
            subcategory="{dataset}",
            labels={"table": "{table}", "file": "plot"},
        ),
    params:
        settings=settings_of("ablations"),
    log:
        "logs/{dataset}/ablations/{table}.log",
    conda:
        ENV
    shell:
        "tpwng ablation-table --settings {params.settings:q} --table {wildcards.table} "
        "--out {output.table} --plot {output.plot} {input} 2> {log}"


rule ablation_summary:
    """Every ablation table of a dataset in one TSV (one header), then the baselines beside
    TPWNG (rows of table `baselines`)."""
    input:
        tables=expand("results/{{dataset}}/ablations/{table}.tsv", table=ABLATION_TABLES),
        baselines="results/{dataset}/baselines.tsv",
    output:
        report(
            "results/{dataset}/ablations/summary.tsv",
            caption="../report/ablation_summary.rst",
            category="Ablations",
            subcategory="{dataset}",
            labels={"table": "all", "file": "summary (TSV)"},
        ),
    log:
        "logs/{dataset}/ablations/summary.log",
    conda:
        ENV
    shell:
        "python -m tpwng.evaluate.ablations summary --out {output} --baselines {input.baselines} "
        "{input.tables} 2> {log}"


rule ablations:
    """Every ablation table of the synthetic demo; other datasets:
    results/{dataset}/ablations/summary.tsv."""
    input:
        "results/synthetic/ablations/summary.tsv",

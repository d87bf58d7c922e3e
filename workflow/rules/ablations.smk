# The paper's ablations (tpwng/resources/ablations.yaml) as DAG branches: one model per variant
# (models/{dataset}/ablations/{variant}/tpwng.pt), trained, scored and evaluated by the same
# commands as the main model on the same feature store, with the variant's settings (the
# dataset's, model overrides merged). A variant whose settings equal the dataset's own reads
# the main model's metrics; variants with equal settings share the first one's branch. With
# several train.seeds, every row is trained once per seed and the table gives mean ± std and a
# paired comparison with the main model.
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
        cuts="data/{dataset}/annotation_cuts.tsv",
        scores="results/{dataset}/ablations/{variant}/scores.h5",
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


# Each variant over the seeds of train.seeds (its train.seed run is the branch above).
use rule train as train_variant_seed with:
    output:
        model="models/{dataset}/ablations/{variant}/seed-{seed}/tpwng.pt",
        log="models/{dataset}/ablations/{variant}/seed-{seed}/train_log.tsv",
    params:
        settings=lambda w: ablations.settings_json(
            with_seed(ds(w.dataset), int(w.seed)), w.variant, "train"
        ),
    log:
        "logs/{dataset}/ablations/{variant}/seed-{seed}/train.log",


use rule infer as infer_variant_seed with:
    input:
        manifest="data/{dataset}/manifest.tsv",
        features="features/{dataset}/features.h5",
        shards=feature_inputs,
        model="models/{dataset}/ablations/{variant}/seed-{seed}/tpwng.pt",
    output:
        "results/{dataset}/ablations/{variant}/seed-{seed}/scores.h5",
    params:
        settings=lambda w: ablations.settings_json(
            with_seed(ds(w.dataset), int(w.seed)), w.variant, "infer"
        ),
    log:
        "logs/{dataset}/ablations/{variant}/seed-{seed}/infer.log",


use rule evaluate as evaluate_variant_seed with:
    input:
        manifest="data/{dataset}/manifest.tsv",
        cuts="data/{dataset}/annotation_cuts.tsv",
        scores="results/{dataset}/ablations/{variant}/seed-{seed}/scores.h5",
        model="models/{dataset}/ablations/{variant}/seed-{seed}/tpwng.pt",
    output:
        auc="results/{dataset}/ablations/{variant}/seed-{seed}_auc.json",
        ap="results/{dataset}/ablations/{variant}/seed-{seed}_ap.json",
        table="results/{dataset}/ablations/{variant}/seed-{seed}_metrics.tsv",
        full="results/{dataset}/ablations/{variant}/seed-{seed}_metrics.json",
        curves="results/{dataset}/ablations/{variant}/seed-{seed}/plots/score_curves.png",
        roc="results/{dataset}/ablations/{variant}/seed-{seed}/plots/roc_pr.png",
    params:
        settings=lambda w: ablations.settings_json(
            with_seed(ds(w.dataset), int(w.seed)), w.variant, "evaluate"
        ),
        prefix=lambda w, output: output.full.removesuffix("_metrics.json"),
    log:
        "logs/{dataset}/ablations/{variant}/seed-{seed}/evaluate.log",


rule ablation_table:
    """One ablation table: our metric per variant beside the paper's numbers, and its plot."""
    input:
        # each row's metrics over the seeds; the main model's where the settings are its own
        rows=ablation_row_metrics,
        main=lambda w: [seed_metrics(w.dataset, s) for s in seed_list(ds(w.dataset))],
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
        seeds=lambda w: " ".join(str(s) for s in seed_list(ds(w.dataset))),
    log:
        "logs/{dataset}/ablations/{table}.log",
    conda:
        ENV
    shell:
        "tpwng ablation-table --settings {params.settings:q} --table {wildcards.table:q} "
        "--seeds {params.seeds} --main {input.main:q} --out {output.table:q} "
        "--plot {output.plot:q} {input.rows:q} 2> {log:q}"


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
        "tpwng ablation-summary --out {output:q} --baselines {input.baselines:q} "
        "{input.tables:q} 2> {log:q}"


rule ablations:
    """Every ablation table of the synthetic demo; other datasets:
    results/{dataset}/ablations/summary.tsv."""
    input:
        "results/synthetic/ablations/summary.tsv",

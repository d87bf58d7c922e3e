# Seeds as a dimension of the DAG (train.seeds): one training job, model, scores file and
# metric table per seed, trained, scored and evaluated by the same commands as the main model
# with train.seed set to the seed. The seed train.seed is the main model itself
# (models/{dataset}/tpwng.pt), so adding seeds re-runs nothing that exists. Target:
# results/{dataset}_reproduction.tsv (and .json, .png).


use rule train as train_seed with:
    output:
        model="models/{dataset}/seed-{seed}/tpwng.pt",
        log="models/{dataset}/seed-{seed}/train_log.tsv",
    params:
        settings=seed_settings("train"),
    log:
        "logs/{dataset}/seed-{seed}/train.log",


use rule infer as infer_seed with:
    input:
        manifest="data/{dataset}/manifest.tsv",
        features="features/{dataset}/features.h5",
        shards=feature_inputs,
        model="models/{dataset}/seed-{seed}/tpwng.pt",
    output:
        "results/{dataset}/seed-{seed}/scores.h5",
    params:
        settings=seed_settings("infer"),
    log:
        "logs/{dataset}/seed-{seed}/infer.log",


use rule evaluate as evaluate_seed with:
    input:
        manifest="data/{dataset}/manifest.tsv",
        cuts="data/{dataset}/annotation_cuts.tsv",
        scores="results/{dataset}/seed-{seed}/scores.h5",
    output:
        auc="results/{dataset}/seed-{seed}_auc.json",
        ap="results/{dataset}/seed-{seed}_ap.json",
        table="results/{dataset}/seed-{seed}_metrics.tsv",
        full="results/{dataset}/seed-{seed}_metrics.json",
        curves="results/{dataset}/seed-{seed}/plots/score_curves.png",
        roc="results/{dataset}/seed-{seed}/plots/roc_pr.png",
    params:
        settings=seed_settings("evaluate"),
        prefix=lambda w, output: output.full.removesuffix("_metrics.json"),
    log:
        "logs/{dataset}/seed-{seed}/evaluate.log",


rule reproduction:
    """Every seed's metrics beside their mean, spread and bootstrap interval, and beside the
    paper's and its peers' published numbers."""
    input:
        manifest="data/{dataset}/manifest.tsv",
        cuts="data/{dataset}/annotation_cuts.tsv",
        metrics=lambda w: [seed_metrics(w.dataset, s) for s in seed_list(ds(w.dataset))],
        scores=lambda w: [seed_scores(w.dataset, s) for s in seed_list(ds(w.dataset))],
    output:
        table=report(
            "results/{dataset}_reproduction.tsv",
            caption="../report/reproduction.rst",
            category="Reproduction",
            subcategory="{dataset}",
        ),
        json="results/{dataset}_reproduction.json",
        plot=report(
            "results/{dataset}_reproduction.png",
            caption="../report/reproduction.rst",
            category="Reproduction",
            subcategory="{dataset}",
        ),
    params:
        settings=settings_of("reproduction"),
        seeds=lambda w: " ".join(str(s) for s in seed_list(ds(w.dataset))),
        prefix=lambda w, output: output.table.removesuffix(".tsv"),
    log:
        "logs/{dataset}/reproduction.log",
    conda:
        ENV
    shell:
        "tpwng reproduction --settings {params.settings:q} --manifest {input.manifest:q} "
        "--seeds {params.seeds} --metrics {input.metrics:q} --scores {input.scores:q} "
        "--annotation-cuts {input.cuts:q} --out-prefix {params.prefix:q} 2> {log:q}"

rule infer:
    """Per-frame and per-snippet anomaly scores of every test video (stored features only)."""
    input:
        manifest="data/{dataset}/manifest.tsv",
        features="features/{dataset}/features.h5",
        shards=feature_inputs,
        model="models/{dataset}/tpwng.pt",
    output:
        "results/{dataset}/scores.h5",
    params:
        settings=settings_of("infer"),
    log:
        "logs/{dataset}/infer.log",
    threads: lambda w: int(ds(w.dataset)["train"]["threads"])
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    shell:
        "tpwng infer --settings {params.settings:q} --manifest {input.manifest:q} "
        "--features {input.features:q} --model {input.model:q} --out {output:q} --threads {threads} "
        "2> {log:q}"


rule evaluate:
    """Metric tables (frame AUC/AP and more) and the score plots."""
    input:
        manifest="data/{dataset}/manifest.tsv",
        cuts="data/{dataset}/annotation_cuts.tsv",
        scores="results/{dataset}/scores.h5",
    output:
        auc="results/{dataset}_auc.json",
        ap="results/{dataset}_ap.json",
        table=report(
            "results/{dataset}_metrics.tsv",
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{dataset}",
        ),
        full="results/{dataset}_metrics.json",
        curves=report(
            "results/{dataset}/plots/score_curves.png",
            caption="../report/score_curves.rst",
            category="Scores",
            subcategory="{dataset}",
        ),
        roc=report(
            "results/{dataset}/plots/roc_pr.png",
            caption="../report/roc_pr.rst",
            category="Metrics",
            subcategory="{dataset}",
        ),
    params:
        settings=settings_of("evaluate"),
        prefix=lambda w, output: output.full.removesuffix("_metrics.json"),
    log:
        "logs/{dataset}/evaluate.log",
    conda:
        ENV
    shell:
        "tpwng evaluate --settings {params.settings:q} --manifest {input.manifest:q} "
        "--scores {input.scores:q} --out-prefix {params.prefix:q} "
        "--annotation-cuts {input.cuts:q} 2> {log:q}"


rule diagnostics:
    """Pseudo-labels against truth, S_aa / S_an similarity curves, training curves."""
    input:
        manifest="data/{dataset}/manifest.tsv",
        features="features/{dataset}/features.h5",
        shards=feature_inputs,
        model="models/{dataset}/tpwng.pt",
        log="models/{dataset}/train_log.tsv",
    output:
        pseudo=report(
            "results/{dataset}/plots/pseudo_labels.png",
            caption="../report/pseudo_labels.rst",
            category="Training",
            subcategory="{dataset}",
        ),
        sims=report(
            "results/{dataset}/plots/similarities.png",
            caption="../report/similarities.rst",
            category="Training",
            subcategory="{dataset}",
        ),
        training=report(
            "results/{dataset}/plots/training.png",
            caption="../report/training.rst",
            category="Training",
            subcategory="{dataset}",
        ),
    params:
        settings=settings_of("diagnostics"),
    log:
        "logs/{dataset}/diagnostics.log",
    threads: 2
    conda:
        ENV
    shell:
        "tpwng diagnostics --settings {params.settings:q} --manifest {input.manifest:q} "
        "--features {input.features:q} --model {input.model:q} --train-log {input.log:q} "
        "--out-dir results/{wildcards.dataset:q}/plots 2> {log:q}"

# Two reference detectors on the same feature store as TPWNG, evaluated on TPWNG's test videos
# and frames: results/{dataset}/baselines.tsv (tpwng.evaluate.baseline_table.baselines_report).
# They read the store as `infer` does, and evaluate's frame convention and false-alarm
# threshold (not its plot settings): STAGES["baselines"] in tpwng/config.py.


rule baselines:
    """Frame AUC, AP and false-alarm rate of nearest-normal distance, top-k MIL ranking and
    TPWNG on the same test videos."""
    input:
        manifest="data/{dataset}/manifest.tsv",
        features="features/{dataset}/features.h5",
        shards=feature_inputs,
        scores="results/{dataset}/scores.h5",
    output:
        report(
            "results/{dataset}/baselines.tsv",
            caption="../report/baselines.rst",
            category="Metrics",
            subcategory="{dataset}",
        ),
    params:
        settings=settings_of("baselines"),
    log:
        "logs/{dataset}/baselines.log",
    threads: 2
    conda:
        ENV
    shell:
        "tpwng baselines --settings {params.settings:q} --manifest {input.manifest:q} "
        "--features {input.features:q} --scores {input.scores:q} --out {output:q} 2> {log:q}"

# The test-set viewer: one self-contained page per dataset (tpwng/scoring/viewer.py).


rule viewer:
    """Every test video's score timeline beside its ground truth, sortable by per-video AUC,
    false-alarm and missed frames; the raw videos play beside it where their files exist
    (browser-playable copies in media/ for those that need one)."""
    input:
        manifest="data/{dataset}/manifest.tsv",
        scores="results/{dataset}/scores.h5",
    output:
        report(
            "results/{dataset}/viewer/index.html",
            caption="../report/viewer.rst",
            category="Scores",
            subcategory="{dataset}",
        ),
    params:
        settings=settings_of("viewer"),
    log:
        "logs/{dataset}/viewer.log",
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    shell:
        "tpwng view --settings {params.settings:q} --manifest {input.manifest:q} "
        "--scores {input.scores:q} --out results/{wildcards.dataset:q}/viewer 2> {log:q}"

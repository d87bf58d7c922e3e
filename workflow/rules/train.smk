rule train:
    """Train TPWNG: prompts, NVP, pseudo-labels and classifier learned together every step."""
    input:
        manifest="data/{dataset}/manifest.tsv",
        features="features/{dataset}/features.h5",
        # the view links these: a deleted shard is re-extracted before anything reads it
        shards=feature_inputs,
    output:
        model="models/{dataset}/tpwng.pt",
        log=report(
            "models/{dataset}/train_log.tsv",
            caption="../report/train_log.rst",
            category="Training",
            subcategory="{dataset}",
        ),
    params:
        settings=settings_of("train"),
    log:
        "logs/{dataset}/train.log",
    threads: lambda w: int(ds(w.dataset)["train"]["threads"])
    resources:
        gpu_share=gpu_share,
        mem_mb=16000,
        runtime=120,
    conda:
        ENV
    shell:
        "tpwng train --settings {params.settings:q} --manifest {input.manifest:q} "
        "--features {input.features:q} --out {output.model:q} --log {output.log:q} "
        "--threads {threads} 2> {log:q}"

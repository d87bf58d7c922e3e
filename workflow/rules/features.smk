rule extract_shard:
    """Decode one shard's videos and embed one frame per snippet with the frozen CLIP encoder
    (one encoder per GPU the job is given: extraction.gpus)."""
    input:
        "data/{dataset}/manifest.tsv",
    output:
        "features/{dataset}/shards/{shard}-of-{nshards}.h5",
    params:
        settings=settings_of("extract"),
    log:
        "logs/{dataset}/extract-{shard}-of-{nshards}.log",
    threads: lambda w: int(ds(w.dataset)["extraction"]["threads"])
    resources:
        gpu=extraction_gpus,
        gpu_share=extraction_gpu_share,
        mem_mb=16000,
        runtime=240,
    conda:
        ENV
    shell:
        "tpwng extract --settings {params.settings:q} --manifest {input:q} "
        "--shard {wildcards.shard:q} --shards {wildcards.nshards:q} --threads {threads} "
        "--gpus {resources.gpu} --out {output:q} 2> {log:q}"


rule import_released:
    """Import released CLIP features (<video>__<crop>.npy) into a feature store."""
    input:
        "data/{dataset}/manifest.tsv",
    output:
        "features/{dataset}/released.h5",
    params:
        settings=settings_of("import"),
    log:
        "logs/{dataset}/import_released.log",
    conda:
        ENV
    shell:
        "tpwng import-features --settings {params.settings:q} --manifest {input:q} "
        "--out {output:q} 2> {log:q}"


rule feature_view:
    """One file that links every video's features (HDF5 external links, no copies)."""
    input:
        feature_inputs,
    output:
        "features/{dataset}/features.h5",
    log:
        "logs/{dataset}/feature_view.log",
    conda:
        ENV
    shell:
        "tpwng merge --out {output:q} {input:q} 2> {log:q}"

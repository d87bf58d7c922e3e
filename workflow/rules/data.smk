rule synthesize:
    """Generate the embedded synthetic dataset (real H.264 videos) in the folder layout."""
    output:
        train="data/{dataset}/raw/train.txt",
        test="data/{dataset}/raw/test.txt",
        annotations="data/{dataset}/raw/annotations.txt",
        truth="data/{dataset}/raw/train_intervals.txt",
    params:
        settings=settings_of("synthesize"),
    log:
        "logs/{dataset}/synthesize.log",
    threads: 2
    conda:
        ENV
    shell:
        "tpwng synth --settings {params.settings:q} --out data/{wildcards.dataset:q}/raw "
        "--jobs {threads} 2> {log:q}"


rule manifest:
    """One row per video: id, path, split, label, classes, intervals, frames, fps, size.

    skipped.tsv lists the videos left out (extraction.on_bad_video: skip) with the reason;
    annotation_cuts.tsv the annotated intervals cut to their video's end
    (annotation_tolerance). Every later stage reads the manifest, so all of them see the same
    video set and ground truth."""
    input:
        manifest_inputs,
    output:
        manifest="data/{dataset}/manifest.tsv",
        skipped="data/{dataset}/skipped.tsv",
        cuts="data/{dataset}/annotation_cuts.tsv",
    params:
        settings=settings_of("manifest"),
    log:
        "logs/{dataset}/manifest.log",
    conda:
        ENV
    shell:
        "tpwng manifest --settings {params.settings:q} --out {output.manifest:q} "
        "--skipped {output.skipped:q} --cuts {output.cuts:q} 2> {log:q}"

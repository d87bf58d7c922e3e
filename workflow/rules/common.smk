import json

from snakemake.utils import validate

from tpwng.config import SCHEMA_PATH, dataset_settings, stage_settings

validate(config, str(SCHEMA_PATH))

DATASETS = list(config["datasets"])
ENV = "../../envs/tpwng.yaml"


wildcard_constraints:
    dataset="|".join(DATASETS),
    shard=r"\d+",
    nshards=r"\d+",


def ds(name):
    """Merged settings of one dataset."""
    return dataset_settings(config, name)


def settings_of(stage):
    """A params function: the settings one stage reads, as one JSON argument for the tpwng
    command. Only these are the rule's params, so a job re-runs when one of them changes."""

    def params(wildcards):
        return json.dumps(stage_settings(ds(wildcards.dataset), stage), sort_keys=True)

    return params


def extraction_gpus(wildcards):
    """GPUs of one extraction job: extraction.gpus, auto meaning one."""
    gpus = ds(wildcards.dataset)["extraction"]["gpus"]
    return 1 if gpus == "auto" else int(gpus)


def n_shards(name):
    return int(ds(name)["extraction"]["shards"])


def shard_files(wildcards):
    n = n_shards(wildcards.dataset)
    return [f"features/{wildcards.dataset}/shards/{k:03d}-of-{n:03d}.h5" for k in range(n)]


def feature_inputs(wildcards):
    """What the feature view links: the shard stores, or the imported release."""
    if ds(wildcards.dataset)["extraction"]["source"] == "released":
        return [f"features/{wildcards.dataset}/released.h5"]
    return shard_files(wildcards)


def manifest_inputs(wildcards):
    if ds(wildcards.dataset)["format"] == "synthetic":
        return [f"data/{wildcards.dataset}/raw/test.txt"]
    return []


def plot_files(name):
    return [
        f"results/{name}/plots/{p}.png"
        for p in ("score_curves", "roc_pr", "pseudo_labels", "similarities", "training")
    ]


def demo_targets(name):
    return [f"results/{name}_auc.json", f"results/{name}_ap.json",
            f"results/{name}_metrics.tsv"] + plot_files(name) + [
            f"results/{name}/viewer/index.html", f"results/{name}/baselines.tsv"]

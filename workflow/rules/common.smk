import json
import math
import re

from snakemake.utils import validate

from tpwng.config import SCHEMA_PATH, dataset_settings, stage_settings, with_seed
from tpwng.config import seeds as seed_list
from tpwng.config import validate as fill_defaults
from tpwng.evaluate import ablations

# the schema's message for a bad config; then defaults for the top-level sections only, so that
# their values reach every dataset that does not set its own
validate(config, str(SCHEMA_PATH), set_default=False)
fill_defaults(config)

DATASETS = list(config["datasets"])
ENV = "../../envs/tpwng.yaml"


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)),
    shard=r"\d+",
    seed=r"\d+",
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


def extraction_gpu_share(wildcards):
    """An extraction job holds its GPUs whole: no training job shares them meanwhile."""
    return 100 * extraction_gpus(wildcards)


def gpu_share(wildcards):
    """A training job's share of one GPU in percent (train.gpu_share): the local profile
    allows 100 per GPU, so 1 / gpu_share seed or variant jobs train on one card at once."""
    return math.ceil(100 * float(ds(wildcards.dataset)["train"]["gpu_share"]))


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


def seed_settings(stage):
    """A params function: what one stage reads of the settings of seed {seed}."""

    def params(wildcards):
        return json.dumps(
            stage_settings(with_seed(ds(wildcards.dataset), int(wildcards.seed)), stage),
            sort_keys=True,
        )

    return params


def seed_prefix(dataset, seed, branch=None):
    """Where the evaluation of one seed (of an ablation branch, or the main model) lives:
    the main model's own paths for train.seed."""
    base = f"results/{dataset}" if branch is None else f"results/{dataset}/ablations/{branch}"
    if int(seed) == int(ds(dataset)["train"]["seed"]):
        return base
    return f"{base}/seed-{seed}"


def seed_metrics(dataset, seed, branch=None):
    return f"{seed_prefix(dataset, seed, branch)}_metrics.json"


def seed_scores(dataset, seed):
    return f"{seed_prefix(dataset, seed)}/scores.h5"


def ablation_row_metrics(wildcards):
    """Each row's metrics over the seeds (row by row, seeds in train.seeds order); a row on the
    main branch reads the main model's."""
    settings = ds(wildcards.dataset)
    return [
        seed_metrics(wildcards.dataset, s, b)
        for b in ablations.row_branches(settings, wildcards.table)
        for s in seed_list(settings)
    ]

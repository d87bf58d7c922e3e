"""The paper's ablations (Tables 2-7, Figs. 5-6) as variants of a dataset's model settings.

The variants live in ``resources/ablations.yaml`` (table → rows of variant name, overrides of the
``model`` section, paper row), the paper's numbers in ``resources/paper_tables.yaml``. A variant's
settings are the dataset's settings with the overrides merged in, so equal variants have equal
settings (and one DAG branch); a variant equal to the dataset's own settings uses the main model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import yaml

from tpwng import RESOURCES
from tpwng.config import SCHEMA_PATH, ConfigError, stage_settings, training_hash, with_seed
from tpwng.evaluate import ResultsError

if TYPE_CHECKING:
    import pandas as pd

TABLE_COLUMNS = (
    "table", "variant", "paper_row", "branch", "overrides", "settings_hash", "metric", "ours",
    "frame_auc", "frame_ap", "paper_ucf_auc", "paper_xd_ap", "seeds", "ours_std",
    "diff_to_main", "diff_std", "diff_p", "exceeds_seed_spread",
)
SPREAD_LEVEL = 0.05  # a paired difference "exceeds the seed spread" below this two-sided p


@dataclass(frozen=True)
class Variant:
    """One row of an ablation table."""

    table: str
    name: str
    overrides: dict[str, Any] = field(hash=False)
    paper_row: str | None = None


@cache
def paper_tables() -> dict[str, dict]:
    """The paper's ablation numbers (percent), by table and row key."""
    return yaml.safe_load((RESOURCES / "paper_tables.yaml").read_text())


@cache
def tables() -> dict[str, tuple[Variant, ...]]:
    """Table name → its variants, in row order; variant names are unique across tables."""
    raw = yaml.safe_load((RESOURCES / "ablations.yaml").read_text())
    paper = paper_tables()
    out: dict[str, tuple[Variant, ...]] = {}
    seen: set[str] = set()
    for table, rows in raw.items():
        variants = tuple(Variant(table, r["variant"], dict(r["overrides"]), r.get("paper_row"))
                         for r in rows)
        for v in variants:
            if v.name in seen or v.name in raw:
                raise ValueError(f"ablation variant {v.name!r} is not unique")
            if v.paper_row is not None and v.paper_row not in paper[table]["rows"]:
                raise ValueError(f"{table}: unknown paper row {v.paper_row!r}")
            seen.add(v.name)
        out[table] = variants
    return out


def variants() -> dict[str, Variant]:
    """Every variant by name."""
    return {v.name: v for rows in tables().values() for v in rows}


@cache
def _model_validator() -> jsonschema.Draft202012Validator:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    return jsonschema.Draft202012Validator(schema["definitions"]["model"])


def apply_overrides(settings: dict, overrides: dict[str, Any]) -> dict:
    """A copy of a dataset's settings with ``overrides`` merged into its ``model`` section."""
    out = copy.deepcopy(settings)
    out["model"] = {**out.get("model", {}), **copy.deepcopy(overrides)}
    error = jsonschema.exceptions.best_match(_model_validator().iter_errors(out["model"]))
    if error is not None:
        raise ConfigError(f"invalid ablation override {json.dumps(overrides)}: {error.message}")
    return out


def variant_settings(settings: dict, variant: str) -> dict:
    """The settings of one variant of a dataset."""
    return apply_overrides(settings, variants()[variant].overrides)


def branches(settings: dict) -> dict[str, str | None]:
    """Variant → the variant whose branch it runs on (the first with equal training settings,
    in table order), or None where they are the dataset's own (the main model)."""
    owner: dict[str, str | None] = {training_hash(settings): None}
    out = {}
    for name in variants():
        out[name] = owner.setdefault(training_hash(variant_settings(settings, name)), name)
    return out


def row_branches(settings: dict, table: str) -> list[str | None]:
    """Each row's branch (see `branches`), in row order."""
    branch = branches(settings)
    return [branch[v.name] for v in tables()[table]]


def settings_json(settings: dict, variant: str, stage: str) -> str:
    """What one stage reads of a variant's settings, as one JSON argument for ``tpwng``."""
    return json.dumps(stage_settings(variant_settings(settings, variant), stage), sort_keys=True)


def headline_metric(settings: dict) -> str:
    """The paper's metric for a dataset: frame AP on XD-Violence, frame AUC otherwise."""
    return "frame_ap" if settings["format"] == "xd" else "frame_auc"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _metric_record(path: Path, expected_hash: str, what: str) -> dict:
    """A metrics file's metrics, checked to be of the settings ``expected_hash`` stands for."""
    record = json.loads(Path(path).read_text())
    if record.get("settings_hash") != expected_hash:
        raise ResultsError(f"{path}: settings hash {record.get('settings_hash')} is not "
                           f"{what}'s ({expected_hash})")
    return record["metrics"]


def paired_difference(ours: list[float], main: list[float]) -> dict[str, str]:
    """A variant against the main model over the same seeds (percent points): the mean and
    sample std of the per-seed differences, the two-sided p of a paired t-test, and whether the
    difference exceeds the seed spread (p < `SPREAD_LEVEL`). Empty with one seed."""
    import numpy as np
    from scipy.stats import t as student_t

    d = np.asarray(ours, dtype=np.float64) - np.asarray(main, dtype=np.float64)
    out = {"diff_to_main": _pct(float(d.mean())), "diff_std": "", "diff_p": "",
           "exceeds_seed_spread": ""}
    if d.size < 2:
        return out
    sd = float(d.std(ddof=1))
    out["diff_std"] = _pct(sd)
    if sd == 0.0:
        p = 1.0 if d.mean() == 0.0 else 0.0  # the same model, or a shift without any spread
    else:
        p = float(2 * student_t.sf(abs(d.mean()) / (sd / np.sqrt(d.size)), d.size - 1))
    out["diff_p"] = f"{p:.4f}"
    out["exceeds_seed_spread"] = "yes" if p < SPREAD_LEVEL else "no"
    return out


def assemble_table(table: str, settings: dict, metric_files: list[Path],
                   seeds: list[int] | None = None,
                   main_files: list[Path] | None = None) -> list[dict[str, str]]:
    """One row per variant of ``table`` (values in percent) from its metric JSONs, in row order.

    ``metric_files`` hold row after row, each row's files in ``seeds`` order (default: the
    dataset's ``train.seed`` alone); ``main_files`` are the main model's over the same seeds.
    Each file's settings hash must be its variant's with its seed, which guards against a row
    read from the wrong branch or seed. ``ours`` is the mean over seeds, ``ours_std`` their
    sample std, and the difference to the main model is paired by seed (`paired_difference`).
    """
    import numpy as np

    rows = tables()[table]
    seeds = [int(settings["train"]["seed"])] if seeds is None else [int(x) for x in seeds]
    if len(set(seeds)) != len(seeds):
        raise ResultsError(f"seeds must be distinct, got {seeds}")
    if len(metric_files) != len(rows) * len(seeds):
        raise ResultsError(f"{table} has {len(rows)} rows x {len(seeds)} seeds, got "
                           f"{len(metric_files)} metric files")
    if main_files is not None and len(main_files) != len(seeds):
        raise ResultsError(f"{len(seeds)} seeds but {len(main_files)} metric files of the "
                           "main model")
    paper = paper_tables()[table]["rows"]
    metric = headline_metric(settings)
    branch = branches(settings)
    main = None
    if main_files is not None:
        main = [100 * _metric_record(f, training_hash(with_seed(settings, s)),
                                     f"the main model of seed {s}")[metric]
                for f, s in zip(main_files, seeds, strict=True)]
    out = []
    for i, v in enumerate(rows):
        files = metric_files[i * len(seeds):(i + 1) * len(seeds)]
        ms = [_metric_record(f, training_hash(variant_settings(with_seed(settings, s), v.name)),
                             f"variant {v.name!r} with seed {s}")
              for f, s in zip(files, seeds, strict=True)]
        ours = [100 * m[metric] for m in ms]
        p = paper.get(v.paper_row, {}) if v.paper_row else {}
        row = {
            "table": table, "variant": v.name, "paper_row": p.get("label", ""),
            "branch": branch[v.name] or "main", "overrides": json.dumps(v.overrides),
            "settings_hash": training_hash(variant_settings(settings, v.name)),
            "metric": metric, "ours": _pct(float(np.mean(ours))),
            "frame_auc": _pct(100 * float(np.mean([m["frame_auc"] for m in ms]))),
            "frame_ap": _pct(100 * float(np.mean([m["frame_ap"] for m in ms]))),
            "paper_ucf_auc": _pct(p.get("ucf_auc")), "paper_xd_ap": _pct(p.get("xd_ap")),
            "seeds": " ".join(map(str, seeds)),
            "ours_std": _pct(float(np.std(ours, ddof=1))) if len(ours) > 1 else "",
        }
        blank = dict.fromkeys(("diff_to_main", "diff_std", "diff_p", "exceeds_seed_spread"), "")
        row |= blank if main is None else paired_difference(ours, main)
        out.append(row)
    return out


def write_rows(rows: list[dict[str, str]], path: Path) -> None:
    """Write ablation rows as a TSV with a header, fields unquoted (atomically)."""
    import pandas as pd

    from tpwng.files import write_table

    write_table(path, pd.DataFrame(rows, columns=list(TABLE_COLUMNS), dtype=str), unquoted=True)


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a table TSV written by `write_rows`."""
    header, *lines = Path(path).read_text().splitlines()
    return [dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines]


def plot_table(rows: list[dict[str, str]], path: Path, title: str) -> None:
    """Grouped bars per variant: our metric next to the paper's UCF AUC and XD AP."""
    import numpy as np

    from tpwng.evaluate.plots import figure

    series = [("ours", f"ours ({rows[0]['metric']})", "#d62728"),
              ("paper_ucf_auc", "paper UCF AUC", "#1f77b4"),
              ("paper_xd_ap", "paper XD AP", "#9ecae1")]
    values = {key: np.array([float(r[key]) if r[key] else np.nan for r in rows])
              for key, _, _ in series}
    low = np.nanmin(np.concatenate(list(values.values())))
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    with figure(path, 1, 1, (max(6.0, 1.1 * len(rows) + 3), 3.8)) as (_, axes):
        ax = axes[0, 0]
        for k, (key, label, color) in enumerate(series):
            vals = values[key]
            offset = (k - (len(series) - 1) / 2) * width
            err = None
            if key == "ours" and any(r.get("ours_std") for r in rows):
                err = [float(r["ours_std"]) if r.get("ours_std") else 0.0 for r in rows]
                label += f", mean ± std over seeds {rows[0]['seeds']}"
            bars = ax.bar(x + offset, vals, width, label=label, color=color, yerr=err,
                          capsize=2 if err else 0)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        ax.set_xticks(x, [r["variant"] for r in rows], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("percent")
        ax.set_ylim(max(0.0, 10 * np.floor((low - 5) / 10)), 102)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def build_table(table: str, settings: dict, metric_files: list[Path], out: Path,
                plot: Path | None = None, seeds: list[int] | None = None,
                main_files: list[Path] | None = None) -> list[dict[str, str]]:
    """Assemble, write and (optionally) plot one ablation table."""
    rows = assemble_table(table, settings, metric_files, seeds, main_files)
    write_rows(rows, out)
    if plot is not None:
        source = paper_tables()[table]["source"]
        plot_table(rows, plot, f"{settings['name']}: {table} (paper {source})")
    return rows


def summary_table(table_files: list[Path], baselines: Path | None = None) -> pd.DataFrame:
    """Every ablation table's rows (`TABLE_COLUMNS`, in file order), then one row per method of
    a baselines table (``table`` = ``baselines``, ``variant`` = the method, our metric and the
    frame AUC / AP in percent as in the ablation rows; the other columns empty)."""
    import pandas as pd

    rows = [r for path in table_files for r in read_table(path)]
    if baselines is not None:
        metrics = {r["metric"] for r in rows}
        if len(metrics) != 1:
            raise ResultsError(f"the ablation tables name {len(metrics)} metrics "
                               f"{sorted(metrics)}; the baselines need one")
        metric = metrics.pop()

        def pct(value: float) -> str:
            return "" if pd.isna(value) else _pct(100 * float(value))

        for r in pd.read_csv(baselines, sep="\t").to_dict("records"):
            rows.append(dict.fromkeys(TABLE_COLUMNS, "") | {
                "table": "baselines", "variant": str(r["method"]), "metric": metric,
                "ours": pct(r[metric]), "frame_auc": pct(r["frame_auc"]),
                "frame_ap": pct(r["frame_ap"])})
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS), dtype=str)


def write_summary(table_files: list[Path], out: Path, baselines: Path | None = None) -> None:
    """Write `summary_table` as a TSV, fields unquoted as in the single tables (atomically)."""
    from tpwng.files import write_table

    write_table(out, summary_table(table_files, baselines), unquoted=True)

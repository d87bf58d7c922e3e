"""The `tpwng` command: one subcommand per pipeline stage (the Snakemake rules call these)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tpwng.errors import CheckpointError, UserError

log = logging.getLogger("tpwng")


def expected_errors() -> tuple[type[BaseException], ...]:
    """The error types whose message is printed as one line (imported only when needed: they
    import torch)."""
    from tpwng.config import ConfigError
    from tpwng.data.datasets import DatasetError
    from tpwng.device import DeviceCountError
    from tpwng.evaluate import ResultsError
    from tpwng.features.clip_backbone import ClipWeightsError
    from tpwng.features.store import StoreError
    from tpwng.features.video import VideoError
    from tpwng.files import WriteError

    return (UserError, ClipWeightsError, StoreError, VideoError, CheckpointError, ConfigError,
            DatasetError, WriteError, DeviceCountError, ResultsError, FileNotFoundError)


def _settings(text: str, threads: int | None = None) -> dict:
    """The stage's settings; ``threads`` (the job's CPUs) becomes ``train.threads``."""
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--settings is not valid JSON: {exc}") from exc
    if threads is not None:
        settings.setdefault("train", {})["threads"] = int(threads)
    return settings


def cmd_synth(a: argparse.Namespace) -> None:
    from tpwng.data.synthetic import SyntheticSpec, generate

    s = _settings(a.settings)
    generate(Path(a.out), SyntheticSpec(**s["synthetic"]), jobs=a.jobs)


def cmd_manifest(a: argparse.Namespace) -> None:
    from tpwng.data.manifest import make_manifest

    s = _settings(a.settings)
    released = s["extraction"]["source"] == "released"
    if not s["root"] and not released:
        raise UserError(
            f"dataset {s['name']!r} has no root: set datasets.{s['name']}.root in config.yaml "
            f"or pass --config {s['name']}_root=DIR"
        )
    rows, skipped = make_manifest(s, Path(a.out), Path(a.skipped) if a.skipped else None,
                                  cuts_out=Path(a.cuts) if a.cuts else None)
    log.info("%s: %d videos, %d skipped", a.out, len(rows), len(skipped))


def cmd_extract(a: argparse.Namespace) -> None:
    from tpwng.data.manifest import read_manifest
    from tpwng.features.clip_backbone import ClipSpec
    from tpwng.features.extract import ExtractionSettings, extract

    s = _settings(a.settings)
    rows = read_manifest(Path(a.manifest))
    mine = rows[a.shard :: a.shards]
    settings = ExtractionSettings.from_config(s["extraction"])
    if a.gpus is not None:
        settings.gpus = a.gpus
    stats = extract(mine, Path(a.out), ClipSpec.from_config(s["clip"]), settings,
                    dataset=s["name"], shard=f"{a.shard}/{a.shards}", threads=a.threads)
    log.info("extracted %s", json.dumps(stats))


def _seed(text: str) -> int:
    """A seed: a whole number >= 0."""
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"a seed is a whole number >= 0, got {text!r}")
    return int(text)


def _gpus(text: str) -> int | str:
    """``--gpus``: auto or a positive number."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 1, got {text!r}")
    return int(text)


def cmd_merge(a: argparse.Namespace) -> None:
    from tpwng.features.store import merge_view

    n = merge_view(a.inputs, a.out)
    log.info("%s: %d videos", a.out, n)


def cmd_import(a: argparse.Namespace) -> None:
    from tpwng.data.manifest import read_manifest
    from tpwng.features.released import import_released

    s = _settings(a.settings)
    n = import_released(read_manifest(Path(a.manifest)), s, Path(a.out))
    log.info("%s: %d videos imported", a.out, n)


def cmd_compare_features(a: argparse.Namespace) -> None:
    from tpwng.evaluate.feature_parity import compare_features

    r = compare_features(a.ours, a.released_dir, a.out, a.crop_ours, a.max_offset)
    c = r["cosine"]
    print(f"{r['videos_compared']} videos compared ({r['only_in_ours']['count']} only in ours, "
          f"{r['only_in_released']['count']} only released); cosine {c['matched_crops']:.4f} "
          f"(matched crops), offsets {r['offsets']}; crops ours->released "
          + ", ".join(f"{p['ours']}->{p['released']}" for p in r["assignment"]))
    print(f"verdict: {r['verdict']}")
    print(f"outputs: {', '.join(r['outputs'].values())}")


def cmd_train(a: argparse.Namespace) -> None:
    from tpwng.heap import keep_freed_memory
    from tpwng.train.loop import train

    keep_freed_memory()
    train(_settings(a.settings, a.threads), Path(a.manifest), Path(a.features), Path(a.out),
          Path(a.log))


def cmd_infer(a: argparse.Namespace) -> None:
    from tpwng.scoring.inference import score_test_set

    score_test_set(_settings(a.settings, a.threads), Path(a.manifest), Path(a.features),
                   Path(a.model), Path(a.out))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from tpwng.evaluate.tables import evaluate

    evaluate(_settings(a.settings), Path(a.manifest), Path(a.scores),
             Path(a.model) if a.model else None, a.out_prefix,
             Path(a.annotation_cuts) if a.annotation_cuts else None)


def cmd_baselines(a: argparse.Namespace) -> None:
    from tpwng.evaluate.baseline_table import baselines_report

    baselines_report(_settings(a.settings), Path(a.manifest), Path(a.features), Path(a.scores),
                     Path(a.out))


def cmd_diagnostics(a: argparse.Namespace) -> None:
    from tpwng.evaluate.diagnostics import diagnostics

    diagnostics(_settings(a.settings), Path(a.manifest), Path(a.features), Path(a.model),
                Path(a.train_log), Path(a.out_dir))


def cmd_ablation_table(a: argparse.Namespace) -> None:
    from tpwng.evaluate.ablations import build_table

    build_table(a.table, _settings(a.settings), [Path(m) for m in a.metrics], Path(a.out),
                Path(a.plot) if a.plot else None, a.seeds,
                [Path(m) for m in a.main] if a.main else None)


def cmd_ablation_summary(a: argparse.Namespace) -> None:
    from tpwng.evaluate.ablations import write_summary

    write_summary([Path(t) for t in a.tables], Path(a.out),
                  Path(a.baselines) if a.baselines else None)


def cmd_reproduction(a: argparse.Namespace) -> None:
    from tpwng.evaluate.reproduction import build_reproduction

    build_reproduction(_settings(a.settings), Path(a.manifest), a.seeds,
                       [Path(m) for m in a.metrics], [Path(s) for s in a.scores], a.out_prefix,
                       Path(a.annotation_cuts) if a.annotation_cuts else None)


def cmd_score(a: argparse.Namespace) -> None:
    from tpwng.scoring.live_source import is_live_source
    from tpwng.scoring.score_video import ScoreOptions, score_paths

    if not 0.0 <= a.threshold <= 1.0 or a.min_length < 0:
        raise UserError("--threshold must be in [0, 1] and --min-length >= 0")
    opts = ScoreOptions(threshold=a.threshold, min_length=a.min_length, stream=a.stream,
                        device=a.device, html=a.html)
    if is_live_source(a.target):
        _score_live(a, opts)
        return
    live_only = [flag for flag, v in (("--timeout", a.timeout), ("--reconnect", a.reconnect),
                                      ("--alert-threshold", a.alert_threshold),
                                      ("--threads", a.threads)) if v is not None]
    if live_only:
        raise UserError(f"{', '.join(live_only)}: only for a live source (a stream URL or "
                        f"/dev/videoN), not for {a.target}")

    def snippet_printer(video: Path):
        print(f"# {video}: snippet, time_s, score", flush=True)
        return lambda i, t, s: print(f"{i:6d} {t:10.3f} {s:.6f}", flush=True)

    def report(v: dict) -> None:
        if "error" in v:
            print(f"tpwng score: error: {v['error']}", file=sys.stderr)
        else:
            print(f"{v['video']}: {v['intervals']} anomalous interval(s), "
                  f"{v['anomalous_s']:.1f} of {v['duration_s']:.1f} s, "
                  f"max score {v['max_score']:.3f}", flush=True)

    out = Path(a.out)
    summary = score_paths(Path(a.target), Path(a.model), out, opts,
                          snippet_printer if a.stream else None, report)
    print(f"outputs in {out}/ (summary.json)")
    if a.html:
        print(f"pages in {out}/: <video>.html"
              + (", index.html" if Path(a.target).is_dir() else ""), flush=True)
    failed = sum("error" in v for v in summary["videos"])
    if failed:
        raise UserError(f"{failed} of {len(summary['videos'])} videos could not be scored")


def _score_live(a: argparse.Namespace, opts) -> None:
    """`tpwng score URL_OR_DEVICE --stream`: score a live source as it arrives."""
    from tpwng.scoring.live import score_live
    from tpwng.scoring.live_source import (
        DEFAULT_RECONNECT,
        DEFAULT_TIMEOUT,
        Interrupted,
        LiveOptions,
        display_source,
    )
    from tpwng.scoring.scorer import load_scorer

    name = display_source(a.target)
    if not a.stream:
        raise UserError(f"{name}: a stream or capture device can only be scored live; "
                        "add --stream")
    if a.html:
        raise UserError(f"{name}: --html needs a video file to show; a live source's scores "
                        "are in <out>/<name>_live.jsonl")
    timeout = DEFAULT_TIMEOUT if a.timeout is None else a.timeout
    reconnect = DEFAULT_RECONNECT if a.reconnect is None else a.reconnect
    if not timeout > 0 or reconnect < 0 or (a.threads is not None and a.threads < 1):
        raise UserError("--timeout must be > 0, --reconnect >= 0 and --threads >= 1")
    if a.alert_threshold is not None and not 0.0 <= a.alert_threshold <= 1.0:
        raise UserError("--alert-threshold must be in [0, 1]")
    scorer = load_scorer(Path(a.model), opts.device, opts.batch_size)
    live = LiveOptions(timeout=timeout, reconnect=reconnect, alert_threshold=a.alert_threshold,
                       threads=a.threads)
    try:
        summary = score_live(scorer, a.target, Path(a.out), opts, live,
                             notify=lambda m: print(f"tpwng score: {m}", file=sys.stderr,
                                                    flush=True))
    except Interrupted as exc:
        raise UserError(str(exc)) from None
    outputs = summary["videos"][0]["outputs"]
    print(f"tpwng score: outputs in {a.out}/: {', '.join(Path(f).name for f in outputs.values())}",
          file=sys.stderr, flush=True)


def _port(text: str) -> int:
    """``--port``: a TCP port number, 0 to 65535 (0: any free one)."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return int(text)


def cmd_serve(a: argparse.Namespace) -> None:
    """`tpwng serve SOURCES.yaml --model M`: many live sources, one scorer (tpwng.serve)."""
    from tpwng.serve import ServeConfigError, run_service

    try:
        run_service(Path(a.sources), Path(a.model), Path(a.out), a.device, a.port, a.bind,
                    notify=lambda m: print(f"tpwng serve: {m}", file=sys.stderr, flush=True))
    except ServeConfigError as exc:
        raise UserError(str(exc)) from None


def cmd_view(a: argparse.Namespace) -> None:
    from tpwng.scoring import viewer, viewer_server

    if a.serve:
        if not Path(a.serve).is_dir():
            raise UserError(f"--serve {a.serve}: no such folder")
        try:
            viewer_server.serve(Path(a.serve), a.port, a.bind)
        except OSError as exc:  # a busy port, a privileged one, an address not of this host
            raise UserError(f"--bind {a.bind} --port {a.port}: cannot serve there "
                            f"({exc.strerror or exc})") from None
        return
    if not (a.manifest and a.scores and a.out):
        raise UserError("give --manifest, --scores and --out (or --serve DIR)")
    threshold = a.threshold
    if threshold is None:
        threshold = float(_settings(a.settings)["evaluate"]["threshold"]) if a.settings else 0.5
    if not 0.0 <= threshold <= 1.0:
        raise UserError("--threshold must be in [0, 1]")
    page = viewer.view_test_set(Path(a.manifest), Path(a.scores), Path(a.out), threshold,
                                convert=not a.no_transcode)
    print(page)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tpwng", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_: str, *args: tuple[str, dict]) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        for flag, kw in args:
            sp.add_argument(flag, **kw)
        sp.set_defaults(func=func)
        return sp

    req = {"required": True}
    settings = ("--settings", {"required": True, "help": "dataset settings as JSON"})
    manifest = ("--manifest", req)
    threads = ("--threads", {"type": int, "help": "CPUs this job may use (the rule's threads)"})
    add("synth", cmd_synth, "generate the synthetic dataset", settings, ("--out", req),
        ("--jobs", {"type": int, "default": 1}))
    add("manifest", cmd_manifest, "build a dataset manifest", settings, ("--out", req),
        ("--skipped", {"help": "list of skipped bad videos (default: skipped.tsv beside --out)"}),
        ("--cuts", {"help": "annotated intervals cut to their video's end (default: "
                            "annotation_cuts.tsv beside --out)"}))
    add("extract", cmd_extract, "extract CLIP features of one shard", settings, manifest,
        ("--shard", {"type": int, "default": 0}), ("--shards", {"type": int, "default": 1}),
        ("--out", req), threads,
        ("--gpus", {"type": _gpus, "help": "CUDA devices to encode on, one encoder each (the "
                                           "rule's gpu resource; default: extraction.gpus)"}))
    add("merge", cmd_merge, "link shard stores into one view", ("--out", req),
        ("inputs", {"nargs": "+"}))
    add("import-features", cmd_import, "import released .npy CLIP features", settings,
        manifest, ("--out", req))
    add("compare-features", cmd_compare_features,
        "hold a store we extracted against released <video>__<crop>.npy features",
        ("ours", {"metavar": "OURS.h5", "help": "our feature store"}),
        ("released_dir", {"metavar": "RELEASED_DIR", "help": "folder of <video>__<crop>.npy"}),
        ("--out", {"metavar": "PREFIX", "help": "writes PREFIX.tsv, .json, .png (default: "
                                                "OURS without .h5 + _vs_released)"}),
        ("--crop-ours", {"metavar": "K", "type": int, "nargs": "+",
                         "help": "compare only these crop ids of our store (default: all)"}),
        ("--max-offset", {"type": int, "default": 8,
                          "help": "snippets searched either way to align (default 8)"}))
    add("train", cmd_train, "train TPWNG", settings, manifest, ("--features", req),
        ("--out", req), ("--log", req), threads)
    add("infer", cmd_infer, "score every test video", settings, manifest, ("--features", req),
        ("--model", req), ("--out", req), threads)
    add("evaluate", cmd_evaluate, "metric tables and plots", settings, manifest,
        ("--scores", req),
        ("--model", {"help": "the checkpoint that wrote --scores, checked when given (the "
                             "model's record is read from the scores file)"}),
        ("--out-prefix", req),
        ("--annotation-cuts", {"help": "the manifest's annotation_cuts.tsv: annotation ends as "
                                       "written for the published fine-grained mAP"}))
    add("baselines", cmd_baselines, "nearest-normal and top-k MIL baselines beside TPWNG",
        settings, manifest, ("--features", req), ("--scores", req), ("--out", req))
    add("diagnostics", cmd_diagnostics, "pseudo-label, similarity and training plots", settings,
        manifest, ("--features", req), ("--model", req), ("--train-log", req),
        ("--out-dir", req))
    seeds = ("--seeds", {"type": _seed, "nargs": "+",
                         "help": "the seeds, in the order of the metrics files"})
    add("ablation-table", cmd_ablation_table, "one ablation table from its rows' metrics",
        settings, ("--table", req), ("--out", req), ("--plot", {}), seeds,
        ("--main", {"nargs": "+", "help": "the main model's *_metrics.json over the seeds"}),
        ("metrics", {"nargs": "+", "help": "each row's *_metrics.json, in row order (with "
                                           "--seeds: each row's over the seeds)"}))
    add("ablation-summary", cmd_ablation_summary, "every ablation table (and the baselines) "
        "in one TSV", ("--out", req),
        ("--baselines", {"help": "results/NAME/baselines.tsv, appended as rows"}),
        ("tables", {"nargs": "+"}))
    add("reproduction", cmd_reproduction, "one model over several seeds beside the published "
        "numbers, with bootstrap intervals", settings, manifest,
        ("--seeds", {**seeds[1], "required": True}),
        ("--metrics", {"nargs": "+", "required": True,
                       "help": "each seed's *_metrics.json, in --seeds order"}),
        ("--scores", {"nargs": "+", "required": True,
                      "help": "each seed's scores.h5, in --seeds order"}),
        ("--annotation-cuts", {"help": "the manifest's annotation_cuts.tsv (the published "
                                       "fine-grained mAP keeps the annotation ends as written)"}),
        ("--out-prefix", {"required": True, "help": "writes PREFIX.tsv, .json and .png"}))
    add("score", cmd_score, "score your own videos, streams or cameras with a trained model",
        ("target", {"metavar": "SOURCE",
                    "help": "a video, a folder of videos, or (with --stream) a live source: an "
                            "http(s)://, rtsp://, rtmp:// or udp:// URL or /dev/videoN"}),
        ("--model", {"required": True, "help": "a trained checkpoint, e.g. models/ucf/tpwng.pt"}),
        ("--out", {"default": "scores", "help": "output folder (default: scores)"}),
        ("--threshold", {"type": float, "default": 0.5, "help": "anomaly score threshold"}),
        ("--min-length", {"type": float, "default": 0.0,
                          "help": "shortest reported interval in seconds (default 0)"}),
        ("--stream", {"action": "store_true",
                      "help": "score snippet by snippet, printing each score as it is decided "
                              "(a live source: one JSON line per snippet)"}),
        ("--device", {"default": "auto", "help": "auto, cpu, cuda, cuda:1, ..."}),
        ("--html", {"action": "store_true",
                    "help": "also write <video>.html per video (video + score timeline) and, "
                            "for a folder, index.html"}),
        ("--timeout", {"type": float, "metavar": "SECONDS",
                       "help": "live source: give up an open or a read after this long without "
                               "data (default 10)"}),
        ("--reconnect", {"type": int, "metavar": "N",
                         "help": "live source: reopen it up to N times after it drops, each "
                                 "try waiting up to --timeout (default 0: its end is the end)"}),
        ("--alert-threshold", {"type": float, "metavar": "X",
                               "help": "live source: also print alert_start / alert_end lines "
                                       "where the snippet score crosses X up / down"}),
        ("--threads", {"type": int, "metavar": "N",
                       "help": "live source: torch's CPU threads beside the decoding thread "
                               "(default: the usable CPUs less one)"}))
    add("view", cmd_view, "test-set score pages beside the videos; or serve pages",
        ("--manifest", {"help": "data/NAME/manifest.tsv"}),
        ("--scores", {"help": "results/NAME/scores.h5"}),
        ("--out", {"help": "output folder (index.html, media/)"}),
        ("--settings", {"help": "dataset settings as JSON (evaluate.threshold)"}),
        ("--threshold", {"type": float, "help": "score threshold (default: the settings', "
                                                "else 0.5)"}),
        ("--no-transcode", {"action": "store_true",
                            "help": "do not write browser-playable copies of other videos"}),
        ("--serve", {"metavar": "DIR", "help": "serve DIR over HTTP with Range requests "
                                               "(seeking works) instead"}),
        ("--port", {"type": _port, "default": 8000,
                    "help": "with --serve (default 8000; 0: any free port)"}),
        ("--bind", {"default": "127.0.0.1", "help": "with --serve (default 127.0.0.1)"}))
    add("serve", cmd_serve, "score many live sources in one process: alerts, a live page, "
        "/metrics",
        ("sources", {"metavar": "SOURCES.yaml",
                     "help": "the sources, alert receivers and settings (docs/own-videos.md: "
                             "Many cameras)"}),
        ("--model", {"required": True, "help": "a trained checkpoint (causal TCSAL)"}),
        ("--out", {"default": "serve", "help": "output folder (default: serve)"}),
        ("--device", {"default": "auto", "help": "auto, cpu, cuda, cuda:1, ..."}),
        ("--port", {"type": _port, "help": "HTTP port (default: the file's http.port, else "
                                           "8080; 0: any free one)"}),
        ("--bind", {"help": "HTTP address (default: the file's http.bind, else 127.0.0.1)"}))
    from tpwng.bench import add_bench_parser

    add_bench_parser(sub)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `tpwng bench` takes its videos before or after its options (argparse
    alone would refuse ``bench extract --model trivial a.mp4``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if (extra and args.command == "bench" and hasattr(args, "videos")
            and not any(e.startswith("-") for e in extra)):
        args.videos = [*args.videos, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except Exception as exc:
        from tpwng.redact import redact_text

        if not isinstance(exc, expected_errors()):
            raise
        print(f"tpwng {args.command}: error: {redact_text(str(exc), *_sources(args))}",
              file=sys.stderr)
        return 2
    return 0


def _sources(args: argparse.Namespace) -> list[str]:
    """The URL the command was given, if any (its secrets are masked in every message)."""
    target = getattr(args, "target", None)
    return [target] if isinstance(target, str) else []


if __name__ == "__main__":
    sys.exit(main())

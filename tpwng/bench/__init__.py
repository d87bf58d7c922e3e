"""Benchmarks that print figures and write them as JSON: `tpwng bench NAME`.

One module per benchmark, each adding its own sub-command (``add_NAME_parser``) and running
it (``run_NAME``): `extract` (extraction rates), `train` (training speed), `memory` (peak memory of
extraction), `live` and `serve` (live scoring latency, one source and many), `bootstrap`
(the reproduction table's bootstrap) and `gpu` (a GPU box in one run). Shared pieces:
`common` (the printed table, peak memory, shared options), `videos` (generated test videos),
`timing` (matmul rate and a part clock of a training step), `attention` (the attention paths
against float64), `trivial` (a stand-in CLIP). Importing a benchmark module does not import
torch: building the command line stays cheap.
"""

from __future__ import annotations

import argparse

from tpwng.bench.bootstrap import add_bootstrap_parser
from tpwng.bench.extract import add_extract_parser
from tpwng.bench.gpu import add_gpu_parser
from tpwng.bench.live import add_live_parser
from tpwng.bench.memory import add_memory_parser
from tpwng.bench.serve import add_serve_parser
from tpwng.bench.train import add_train_parser

# the sub-commands, in the order `tpwng bench --help` lists them
BENCHMARKS = (add_extract_parser, add_train_parser, add_memory_parser, add_live_parser,
              add_serve_parser, add_bootstrap_parser, add_gpu_parser)


def add_bench_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`tpwng bench` with one sub-command per benchmark (`BENCHMARKS`)."""
    b = sub.add_parser("bench", help="benchmarks: extraction rates, training speed, live "
                                     "scoring latency, a GPU box in one run",
                       description="Benchmarks that print figures and write them as JSON "
                                   "(tpwng bench NAME --help: one benchmark's options).")
    names = b.add_subparsers(dest="what", required=True, metavar="NAME")
    for add_parser in BENCHMARKS:
        add_parser(names)
    return b

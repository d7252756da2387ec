"""Smoke tests of the other supported Pythons (3.12, 3.13) in the environments `.ci/run` makes.

``.venv-py3XX`` holds the full install (extra ``train``), ``.venv-py3XX-lite`` the
TensorFlow-free one; each found is tested here (none found: skipped, and `.ci/run` says
which interpreters it did not find). Full: ``--help``, then a tiny train → export →
predict; the newest interpreter also converts to TFLite and predicts through LiteRT.
Lite: ``--help`` and predict on a TFLite folder without TensorFlow. The tiny settings are those of the main suite (conftest).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_set_args, write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
VENVS = sorted(p for p in ROOT.glob(".venv-py3*") if (p / "bin" / "birdnet-tf").is_file())
FULL = [v for v in VENVS if not v.name.endswith("-lite")]
LITE = [v for v in VENVS if v.name.endswith("-lite")]


def _run(venv: Path, argv: list[str], cwd: Path, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(BIRDNET_TF_CACHE=str(cwd / "cache"), PYTHONNOUSERSITE="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([str(venv / "bin" / "birdnet-tf"), *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{venv.name}: birdnet-tf {' '.join(argv[:2])} failed ({proc.returncode}):\n" \
                                 f"{proc.stdout[-1500:]}\n{proc.stderr[-2500:]}"
    return proc.stdout + proc.stderr


def _version(venv: Path) -> str:
    return subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.version.split()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("pyversions") / "synth")


@pytest.fixture(scope="module")
def tflite_folder(tflite_tiny):
    return tflite_tiny.out


@pytest.mark.skipif(not FULL, reason="no .venv-py3XX (see .ci/run)")
@pytest.mark.parametrize("venv", FULL, ids=lambda v: v.name)
def test_full_install_trains_exports_and_predicts(venv, synthetic, tmp_path):
    assert _version(venv).startswith(f"3.{venv.name.removeprefix('.venv-py3')}")
    assert "train" in _run(venv, ["--help"], tmp_path)
    _run(venv, ["train", "--data", str(synthetic), "--out", "run", *tiny_set_args()], tmp_path, timeout=300)
    _run(venv, ["export", "run", "--out", "export"], tmp_path)
    models = ["export"]
    if venv == FULL[-1]:  # the TFLite converter on the newest Python (LiteRT runs on every one, below)
        _run(venv, ["tflite", "run", "--out", "tflite", "--quantization", "float32", "--no-embeddings"], tmp_path)
        models.append("tflite")
    for model in models:
        _run(venv, ["predict", model, str(synthetic), "--out", f"{model}.csv", "--no-progress"], tmp_path)
    saved = pd.read_csv(tmp_path / "export.csv")
    assert len(saved) > 0 and saved.iloc[:, 3:].to_numpy().std() > 0
    if "tflite" in models:
        lite = pd.read_csv(tmp_path / "tflite.csv")
        assert len(saved) == len(lite)
        assert (saved.iloc[:, 3:] - lite.iloc[:, 3:]).abs().to_numpy().max() <= 1e-4


@pytest.mark.skipif(not LITE, reason="no .venv-py3XX-lite (see .ci/run)")
@pytest.mark.parametrize("venv", LITE, ids=lambda v: v.name)
def test_lite_install_predicts_without_tensorflow(venv, tflite_folder, synthetic, tmp_path):
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import tensorflow"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr
    _run(venv, ["--help"], tmp_path)
    _run(venv, ["predict", str(tflite_folder), str(synthetic), "--window-s", "2", "--out", "s.csv", "--no-progress"],
         tmp_path)
    assert len(pd.read_csv(tmp_path / "s.csv")) > 0


def test_this_interpreter_is_supported():
    assert (3, 11) <= sys.version_info[:2] < (3, 14)

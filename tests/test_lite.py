"""The TensorFlow-free runtime (birdnet_tf.lite): LiteRT whole-recording inference of a
``birdnet-tf tflite`` folder, equal to the SavedModel's, in a virtual environment without TensorFlow.

The tiny synthetic run (``trained_synthetic``) is converted once per session (``tflite_tiny``,
conftest; its float16 and int8 halves are verified in test_tflite.py) and scored on real xc-pr20 recordings: one
shorter than a window (looped), an MP3, and one of 21 s, which crosses the boundaries of
the 10-s front chunks and body segments.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from conftest import run_cli, xc_pr20_dir  # noqa: E402

from birdnet_tf.errors import BirdnetError  # noqa: E402
from birdnet_tf.infer.predict import predict  # noqa: E402
from birdnet_tf.lite import LiteModel, is_tflite_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: xc-pr20: 1.7 s (shorter than the 2-s window), 10.3 s MP3, 21.1 s MP3 (three front chunks / body segments)
FILES = ("audio/XC862653.ogg", "audio/XC5164.mp3", "audio/XC100158.mp3")


@pytest.fixture(scope="module")
def audio(trained_synthetic):
    xc = xc_pr20_dir()
    if xc is None or not all((xc / f).is_file() for f in FILES):
        pytest.skip("xc-pr20 is not on this machine")
    return [str(xc / f) for f in FILES]


@pytest.fixture(scope="module")
def lite_folder(tflite_tiny, audio):
    """The session's shared TFLite export (conftest ``tflite_tiny``), verified on ``FILES`` among others."""
    assert set(audio) <= set(tflite_tiny.check_files)
    return tflite_tiny


def _both(trained_synthetic, lite_folder, audio, **kwargs):
    saved, _ = predict(trained_synthetic.export, audio, progress=False, log=lambda m: None, **kwargs)
    lite, _ = predict(None, audio, progress=False, log=lambda m: None, model=LiteModel(lite_folder.out), **kwargs)
    return saved, lite


@pytest.mark.parametrize("grid", [{"window_s": 2.0, "hop_s": 0.7},  # starts off the step grid
                                  {"window_s": 5.0},  # the BirdCLEF soundscape grid
                                  {}])  # per file: the model's windows pooled
def test_litert_whole_recording_scores_equal_the_savedmodels(trained_synthetic, lite_folder, audio, grid):
    saved, lite = _both(trained_synthetic, lite_folder, audio, **grid)
    assert len(lite) == len(saved) >= len(audio)
    pd.testing.assert_frame_equal(lite.iloc[:, :3], saved.iloc[:, :3])
    diff = np.abs(lite.iloc[:, 3:].to_numpy() - saved.iloc[:, 3:].to_numpy())
    assert diff.max() <= 1e-4, diff.max()
    assert lite.iloc[:, 3:].to_numpy().std() > 1e-3  # real scores, not a constant


def test_the_export_verified_the_halves_on_the_recordings(lite_folder):
    meta = json.loads((lite_folder.out / "model_float32.json").read_text())
    whole = meta["whole_recording"]
    assert (lite_folder.out / whole["front"]).is_file() and (lite_folder.out / whole["body"]).is_file()
    assert whole["verification"]["recordings"] == 1 + len(lite_folder.check_files)  # the test signals + each recording
    assert whole["verification"]["max_abs_diff"] <= 1e-4
    assert any("whole-recording halves" in line for line in lite_folder.logs)


def test_a_folder_without_its_sidecar_or_halves_is_refused_clearly(lite_folder, audio, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(lite_folder.out, broken)
    (broken / "body_float32.tflite").unlink()
    with pytest.raises(BirdnetError, match="body_float32.tflite: TFLite model file does not exist"):
        LiteModel(broken).whole_model()
    (broken / "model_float32.json").unlink()
    assert is_tflite_folder(broken)
    with pytest.raises(BirdnetError, match=r"no sidecar model_float32.json beside it \(labels"):
        LiteModel(broken)
    with pytest.raises(BirdnetError, match="no model_<quantization>.tflite in it"):
        LiteModel(tmp_path)
    with pytest.raises(BirdnetError, match="takes windows of 2 s only, not 3 s; use --engine whole"):
        predict(None, audio[:1], window_s=3.0, engine="sliding", progress=False, log=lambda m: None,
                model=LiteModel(lite_folder.out))


# ------------------------------------------------------------ without TensorFlow
def _requirements(dist_name: str) -> list[str]:
    """Distributions ``dist_name`` needs (markers evaluated here, extras left out)."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    out = []
    for line in distribution(dist_name).requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req.name)
    return out


def lite_distributions() -> list[str]:
    """The installed distributions of setup.py's base (TensorFlow-free) requirements, with theirs."""
    import re

    text = (ROOT / "setup.py").read_text()
    block = text[text.index("LITE_REQUIRES = ["):text.index("]", text.index("LITE_REQUIRES = ["))]
    todo = [name for name in re.findall(r'"([A-Za-z0-9_.-]+)==', block)]
    seen: dict[str, None] = {}
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name not in seen:
            seen[name] = None
            todo += _requirements(name)
    return sorted(seen)


def lite_venv() -> Path:
    """A virtual environment with the TensorFlow-free install only, cached under ``.cache/``.

    ``python -m venv --without-pip``, then the files of each distribution of
    :func:`lite_distributions` (code and ``dist-info``, as a wheel install lays them out)
    hard-linked from this interpreter's site-packages: what ``pip install`` of the pinned
    wheels would put there, without the network. Keyed by setup.py, the interpreter and the list.
    """
    from importlib.metadata import distribution

    dists = lite_distributions()
    key = hashlib.sha256("\n".join([(ROOT / "setup.py").read_text(), sys.version, *dists]).encode()).hexdigest()[:12]
    venv = ROOT / ".cache" / f"lite-venv-{key}"
    if (venv / ".complete").is_file():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip())
    for name in dists:
        dist = distribution(name)
        base = Path(dist.locate_file("")).resolve()
        for f in dist.files or []:
            src = Path(dist.locate_file(f)).resolve()
            if not src.is_file() or base not in src.parents:
                continue  # scripts in bin/, and files outside site-packages
            dst = site / src.relative_to(base)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    (venv / ".complete").write_text("\n".join(dists) + "\n")
    return venv


def test_lite_install_has_no_tensorflow_and_predict_never_imports_it(trained_synthetic, lite_folder, audio,
                                                                     tmp_path):
    dists = lite_distributions()
    assert "tensorflow" not in dists and "keras" not in dists and "ai-edge-litert" in dists
    venv = lite_venv()
    site = tmp_path / "site"  # the package under test, installed as a wheel lays it out
    shutil.copytree(ROOT / "birdnet_tf", site / "birdnet_tf", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "scores.csv"
    script = f"""
import sys
try:
    import tensorflow
    sys.exit("tensorflow is importable in the lite venv")
except ModuleNotFoundError:
    pass
from birdnet_tf.cli import main
rc = main(["predict", {str(lite_folder.out)!r}, *{audio!r}, "--out", {str(out)!r}, "--window-s", "2", "--hop-s", "0.7",
           "--no-progress"])
assert rc == 0, rc
assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "predict imported TensorFlow"
assert main(["train", "--data", "x", "--out", "y"]) == 2
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in ("numpy", "ai_edge_litert"))[:2])
"""
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
           "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "needs tensorflow, which the TensorFlow-free install lacks" in proc.stderr
    assert "pip install 'birdnet-tf[train]'" in proc.stderr
    got = pd.read_csv(out)
    want, _ = predict(trained_synthetic.export, audio, window_s=2.0, hop_s=0.7, progress=False,
                      log=lambda m: None)
    assert np.abs(got.iloc[:, 3:].to_numpy() - want.iloc[:, 3:].to_numpy()).max() <= 1e-4


def test_cli_predict_on_a_tflite_folder_writes_a_birdclef_soundscape_file(trained_synthetic, lite_folder, audio,
                                                                         tmp_path):
    lines = {}
    for name, model in (("lite", lite_folder.out), ("saved", trained_synthetic.export)):
        rc, out, err = run_cli(["predict", str(model), *audio, "--window-s", "5", "--format", "birdclef-soundscape",
                                "--out", str(tmp_path / f"{name}.txt"), "--no-progress"])
        assert rc == 0, err
        lines[name] = [line.split(";") for line in (tmp_path / f"{name}.txt").read_text().splitlines()]
    windows = {tuple(row[:2]) for row in lines["lite"]}
    assert len(windows) == 1 + 3 + 5  # 5-s windows of 1.7 s, 10.3 s and 21.1 s (no sliver under 0.1 s)
    assert [row[:2] for row in lines["lite"]] == [row[:2] for row in lines["saved"]]
    got = {(row[0], row[1], row[2]): float(row[3]) for row in lines["lite"]}
    want = {(row[0], row[1], row[2]): float(row[3]) for row in lines["saved"]}
    assert got.keys() == want.keys() and max(abs(got[k] - want[k]) for k in got) <= 1e-4


@pytest.mark.parametrize("method", ["max", "mean", "logmeanexp:2", "noisy-or", "attention:2"])
def test_numpy_pooling_twin_equals_the_tf_definition(method):
    """The LiteRT runtime pools with models.pooling_np; it must equal models.layers.pool_packed, masked too."""
    from birdnet_tf.models.layers import pool_packed
    from birdnet_tf.models.pooling_np import pool_packed_np

    rng = np.random.default_rng(0)
    classes, heads = 3, (2 if method.startswith("attention") else 0)
    x = (4 * rng.normal(size=(5, 7, classes * (1 + heads)))).astype(np.float32)
    mask = np.arange(7)[None, :] < np.array([7, 1, 3, 6, 2])[:, None]
    for m in (None, mask):
        want = np.asarray(pool_packed(x, method, mask=m), np.float64)
        got = pool_packed_np(x, method, mask=m)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

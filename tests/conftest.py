"""Shared fixtures: tiny configs, synthetic and real datasets, an isolated cache.

Everything here is sized for a 2-core CPU: the tiny config trains an epoch on a
dozen short files in seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

#: Overrides (as ``--set`` strings) that make a run train in seconds on a CPU.
TINY_SETTINGS = [
    "train.epochs=1",
    "train.warmup_epochs=0",
    "model.dense_units=16",
    "model.width=0.25",
    "model.dropout=0.1",
    "data.batch_size=4",
    "data.excerpt_s=2.0",
    "data.eval_hop_s=2.0",
    "data.max_excerpts_per_file=1",
    "data.max_eval_windows=2",
]

#: Sample rate of the synthetic sources (not the model's, so preparing resamples).
SYNTH_RATE_HZ = 16000

#: Synthetic classes: a 1-kHz tone, a 2->4 kHz chirp, band noise around 6 kHz (see synth_signal).
SYNTH_CLASSES = ("tone1k", "chirp2to4k", "noise6k")


def xc_pr20_dir() -> Path | None:
    """The real xc-pr20 dataset beside the repository, or from $BIRDNET_TF_XC_PR20."""
    candidates = [Path(__file__).resolve().parents[2] / "shared/data/xc-pr20"]
    if os.environ.get("BIRDNET_TF_XC_PR20"):
        candidates.append(Path(os.environ["BIRDNET_TF_XC_PR20"]))
    for candidate in candidates:
        if (candidate / "metadata.csv").is_file() and (candidate / "audio").is_dir():
            return candidate
    return None


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test prepares raw audio into its own temporary cache, never into $HOME."""
    monkeypatch.setenv("BIRDNET_TF_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def xc_pr20() -> Path:
    folder = xc_pr20_dir()
    if folder is None:
        pytest.skip("real dataset xc-pr20 not found (set BIRDNET_TF_XC_PR20)")
    return folder


@pytest.fixture
def librosa():
    """librosa, the reference implementation some tests compare with; skips only those tests without it."""
    return pytest.importorskip("librosa")


@pytest.fixture
def tiny_settings() -> list[str]:
    return list(TINY_SETTINGS)


@pytest.fixture
def tiny_config():
    return tiny_cfg()


def tone(freq_hz: float, rate_hz: int, duration_s: float, amp: float = 0.5) -> np.ndarray:
    """A sine of ``round(rate_hz × duration_s)`` samples, float64 (the one tone writer of the tests)."""
    t = np.arange(int(round(rate_hz * duration_s))) / rate_hz
    return amp * np.sin(2 * np.pi * freq_hz * t)


def tiny_cfg(*settings: str):
    """``Config`` of :data:`TINY_SETTINGS` plus ``settings`` (``section.field=value``)."""
    from birdnet_tf.config import Config

    return Config().replace([*TINY_SETTINGS, *settings])


def tiny_model(classes: int, center: bool = False, seed: int = 0):
    """``(model, cfg)``: the default model at the tiny settings, seeded, band centring on or off."""
    import keras

    from birdnet_tf.models.build import build_model

    keras.utils.set_random_seed(seed)
    cfg = tiny_cfg(f"frontend.center_bands={center}")
    return build_model(cfg, classes), cfg


def synth_signal(kind: str, duration_s: float, rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """One seeded synthetic recording of class ``kind``, float64 in about ±0.5."""
    n = int(round(duration_s * rate_hz))
    t = np.arange(n) / rate_hz
    if kind == "tone1k":
        x = 0.4 * np.sin(2 * np.pi * 1000.0 * t + rng.uniform(0, 2 * np.pi))
    elif kind == "chirp2to4k":
        # linear sweep 2 -> 4 kHz, repeating every second
        tau = t % 1.0
        x = 0.4 * np.sin(2 * np.pi * (2000.0 * tau + 1000.0 * tau**2))
    elif kind == "noise6k":
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / rate_hz)
        spec[(f < 5500) | (f > 6500)] = 0
        x = np.fft.irfft(spec, n)
        x = 0.4 * x / (np.max(np.abs(x)) + 1e-12)
    else:
        raise ValueError(kind)
    return x + 0.003 * rng.standard_normal(n)


def write_synthetic_dataset(root: Path, files_per_class: int = 4, seed: int = 0) -> Path:
    """Writes a class-folder dataset of seeded synthetic 16-kHz 16-bit WAVs; returns ``root``.

    Per class ``files_per_class`` files of 2 to 4 s (file 0 is exactly 2 s).
    """
    rng = np.random.default_rng(seed)
    for kind in SYNTH_CLASSES:
        (root / kind).mkdir(parents=True)
        for i in range(files_per_class):
            duration = 2.0 + 2.0 * i / max(1, files_per_class - 1)
            x = synth_signal(kind, duration, SYNTH_RATE_HZ, rng)
            sf.write(root / kind / f"{kind}_{i}.wav", x, SYNTH_RATE_HZ, subtype="PCM_16")
    return root


@pytest.fixture
def synthetic_dataset(tmp_path):
    """Factory: ``make(name="synth", files_per_class=4)`` writes a class-folder dataset.

    Three classes (``tone1k``, ``chirp2to4k``, ``noise6k``) of seeded 2-4 s 16-bit WAVs
    at 16 kHz; returns the dataset folder.
    """

    def make(name: str = "synth", files_per_class: int = 4, seed: int = 0) -> Path:
        return write_synthetic_dataset(tmp_path / name, files_per_class, seed)

    return make


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``birdnet_tf.cli.main(argv)`` in process: (exit code, stdout, stderr)."""
    from birdnet_tf.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def tiny_set_args(extra: list[str] | None = None) -> list[str]:
    """``--set`` arguments of :data:`TINY_SETTINGS` plus ``extra``."""
    return [a for s in [*TINY_SETTINGS, *(extra or [])] for a in ("--set", s)]


def build_once(tmp_path_factory, name: str, build) -> tuple[Path, dict]:
    """``(folder, info)``: ``build(folder)`` run once per test session, also across pytest-xdist workers.

    Under xdist (``make test`` runs two processes) each worker has its own session, so a
    session fixture would be built once per worker. Here the first worker to get the lock
    builds into a folder beside the workers' own temporary folders and records the
    JSON-able ``info`` that ``build`` returns; the others wait for the lock and reuse both
    (pytest-xdist's documented recipe for session fixtures). A build that failed leaves no
    record, so the next worker builds again (and fails with its own message).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, record = root / name, root / f"{name}.done.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not record.is_file():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                info = build(folder)
                record.write_text(json.dumps(info, default=str))
            return folder, json.loads(record.read_text())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def trained_synthetic(tmp_path_factory):
    """One tiny run on the synthetic dataset, shared by the tests that only read it.

    prepare → train (1 epoch) → export, all through ``birdnet_tf.cli.main``, once per
    session (:func:`build_once`). Returns a namespace with the folders (``data``,
    ``prepared``, ``run``, ``export``) and the ``(rc, stdout, stderr)`` of each step in
    ``steps``. Tests must not modify these folders (copy them first).
    """

    def build(root: Path) -> dict:
        data = write_synthetic_dataset(root / "synth")
        steps = {}
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BIRDNET_TF_CACHE", str(root / "cache"))
            for name, argv in [
                ("prepare", ["prepare", str(data), "--out", str(root / "prepared"), "--workers", "1",
                             "--no-progress"]),
                ("train", ["train", "--data", str(root / "prepared"), "--out", str(root / "run"), *tiny_set_args()]),
                ("export", ["export", str(root / "run"), "--out", str(root / "export")]),
            ]:
                if name == "prepare":  # the 16-kHz sources are below the model's rate: prepare says so, once per file
                    with pytest.warns(UserWarning, match="recorded at 16000 Hz, below the target 22050 Hz"):
                        steps[name] = run_cli(argv)
                else:
                    steps[name] = run_cli(argv)
                rc, out, err = steps[name]
                assert rc == 0, f"{name} failed with {rc}:\n{out[-3000:]}\n{err[-3000:]}"
        return {"data": str(data), "steps": steps}

    root, info = build_once(tmp_path_factory, "trained_synthetic", build)
    return types.SimpleNamespace(data=Path(info["data"]), prepared=root / "prepared", run=root / "run",
                                 export=root / "export", steps={k: tuple(v) for k, v in info["steps"].items()})


#: A handful of short xc-pr20 recordings: 3 species, each by >= 2 recordists, Ogg and MP3.
REAL_SUBSET = (
    "audio/XC862653.ogg",  # Setophaga adelaidae, Daniel Parker, 1.7 s
    "audio/XC9415.ogg",  # Setophaga adelaidae, Allen T. Chartier, 3.0 s
    "audio/XC308510.ogg",  # Setophaga adelaidae, Ross Gallardy, 5.4 s
    "audio/XC5164.mp3",  # Setophaga adelaidae, Don Jones, 10.3 s (MP3)
    "audio/XC173664.ogg",  # Melopyrrha portoricensis, Eric DeFonso, 4.0 s
    "audio/XC178978.ogg",  # Melopyrrha portoricensis, Tom Auer, 7.0 s
    "audio/XC9423.ogg",  # Vireo latimeri, Allen T. Chartier, 4.1 s
    "audio/XC308504.ogg",  # Vireo latimeri, Ross Gallardy, 8.3 s
)


#: The xc-pr20 files the shared TFLite export (``tflite_tiny``) is verified on: Ogg and MP3,
#: one shorter than the tiny run's 2-s window, one of 21 s (three 10-s front chunks).
TFLITE_CHECK_FILES = (*REAL_SUBSET[:4], "audio/XC100158.mp3")


@pytest.fixture(scope="session")
def tflite_tiny(trained_synthetic, tmp_path_factory):
    """``export_tflite`` of ``trained_synthetic`` in every quantization, with the whole-recording halves.

    One conversion per session (:func:`build_once`) shared by the TFLite, LiteRT, engine,
    embedding and Python-version tests (each conversion costs tens of seconds). Verified against the run's SavedModel export on
    :data:`TFLITE_CHECK_FILES` (the synthetic dataset when xc-pr20 is absent). Returns a
    namespace: ``out`` (the folder), ``results`` and ``logs`` of the export, ``check_files``.
    Tests must not modify the folder (copy it first).
    """
    pytest.importorskip("ai_edge_litert")
    from birdnet_tf.tflite import export_tflite

    xc = xc_pr20_dir()
    files = [xc / f for f in TFLITE_CHECK_FILES] if xc is not None else []
    check = [str(f) for f in files] if files and all(f.is_file() for f in files) else [str(trained_synthetic.data)]

    def build(root: Path) -> dict:
        logs: list[str] = []
        results = export_tflite(trained_synthetic.run, root / "tflite", check_audio=check,
                                reference=trained_synthetic.export, log=logs.append)
        return {"results": results, "logs": logs}

    root, info = build_once(tmp_path_factory, "tflite_tiny", build)
    return types.SimpleNamespace(out=root / "tflite", results=info["results"], logs=info["logs"], check_files=check)


def pick_real_subset(xc: Path, files=REAL_SUBSET) -> pd.DataFrame:
    """The xc-pr20 metadata rows of ``files`` (skips the test if any is missing)."""
    meta = pd.read_csv(xc / "metadata.csv", dtype=str, keep_default_na=False)
    rows = meta[meta["filename"].isin(files)]
    if len(rows) != len(files) or not all((xc / f).is_file() for f in files):
        pytest.skip("xc-pr20 lacks some recordings of the test subset")
    return rows.reset_index(drop=True)


@pytest.fixture
def real_subset(tmp_path, xc_pr20):
    """Factory: ``make()`` → a metadata.csv dataset of the :data:`REAL_SUBSET` (Ogg and MP3).

    The folder holds ``metadata.csv`` (the xc-pr20 rows of the chosen files) and
    ``audio`` as a symlink to xc-pr20's audio folder, so ``filename`` stays relative.
    """

    def make(name: str = "real", files=REAL_SUBSET) -> Path:
        subset = pick_real_subset(xc_pr20, files)
        root = tmp_path / name
        root.mkdir()
        (root / "audio").symlink_to(xc_pr20 / "audio", target_is_directory=True)
        subset.to_csv(root / "metadata.csv", index=False)
        return root

    return make


def interrupt_training_at_epoch_2(monkeypatch):
    """Makes training raise KeyboardInterrupt (Ctrl-C) as epoch 2 begins, after epoch 1 was saved.

    Returns a function that undoes it, so the same test can resume the run.
    """
    from birdnet_tf.train import callbacks

    real_checkpoint = callbacks.RunCheckpoint

    class InterruptingCheckpoint(real_checkpoint):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(callbacks, "RunCheckpoint", InterruptingCheckpoint)
    return lambda: monkeypatch.setattr(callbacks, "RunCheckpoint", real_checkpoint)

"""Tests of birdnet_tf.tflite: built-in-only conversion, LiteRT inference, verification, sidecar, CLI.

The tiny synthetic run (``trained_synthetic``) is converted once per session in every
quantization (``tflite_tiny``, conftest); its scores are compared with its real SavedModel export on windows of
real xc-pr20 recordings (synthetic recordings when xc-pr20 is absent).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from conftest import run_cli  # noqa: E402

from birdnet_tf.errors import BirdnetError  # noqa: E402
from birdnet_tf.export import ExportedModel  # noqa: E402
from birdnet_tf.infer.predict import expand_inputs  # noqa: E402
from birdnet_tf.tflite import (  # noqa: E402
    EMBED_TOLERANCES,
    QUANTIZATIONS,
    TFLITE_MARKER,
    TOLERANCES,
    TFLiteModel,
    audio_windows,
    check_builtin_only,
    check_outputs,
    convert,
    export_tflite,
    flatbuffer_ops,
    verify,
)

#: the tiny run's window: data.excerpt_s = 2.0 s at 22,050 Hz
WINDOW = 44100
SR = 22050


@pytest.fixture(scope="module")
def check_files(tflite_tiny):
    """The recordings the shared export was verified on (real xc-pr20 files, or the synthetic dataset)."""
    return tflite_tiny.check_files


@pytest.fixture(scope="module")
def windows(check_files):
    w, used, skipped = audio_windows(check_files, WINDOW, SR, max_per_file=2)
    assert len(w) >= 4 and not skipped
    return w


@pytest.fixture(scope="module")
def reference(trained_synthetic):
    return ExportedModel(trained_synthetic.export)


@pytest.fixture(scope="module")
def exported(tflite_tiny):
    """``export_tflite`` of the tiny run in all three quantizations, verified on ``check_files`` (conftest)."""
    return tflite_tiny


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_each_quantization_is_builtin_only_and_agrees_with_the_savedmodel(exported, reference, windows,
                                                                         quantization):
    path = exported.out / f"model_{quantization}.tflite"
    content = path.read_bytes()
    ops = flatbuffer_ops(content)
    assert not [op for op in ops if op.startswith("CUSTOM") or op.startswith("Flex")], ops
    assert not {"VAR_HANDLE", "READ_VARIABLE"} & set(ops), "variables must be frozen"
    assert "RFFT2D" in ops  # the spectrogram frontend is inside the flatbuffer
    check_builtin_only(content)

    model = TFLiteModel(path, num_threads=1)  # ai-edge-litert, no Flex delegate available
    assert model.quantization == quantization
    assert not model.dynamic_batch and model.window_samples == WINDOW
    got = model(windows)
    ref = reference(windows)
    assert got.shape == ref.shape == (len(windows), len(reference.labels))
    assert np.isfinite(got).all()
    assert np.all((got >= 0) & (got <= 1))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-4)  # softmax outputs
    diff = np.abs(got - ref).max()
    assert diff <= TOLERANCES[quantization], f"{quantization}: max |Δscore| {diff}"
    if quantization == "float32":
        assert diff <= 1e-4


def test_quantized_models_are_smaller_and_report_their_verification(exported):
    sizes = {q: (exported.out / f"model_{q}.tflite").stat().st_size for q in QUANTIZATIONS}
    assert sizes["float16"] < 0.75 * sizes["float32"]
    # int8 keeps the mel filterbank (41k weights) in float32, so int8 only beats float16 on larger networks
    assert sizes["int8"] < sizes["float32"]
    for q in QUANTIZATIONS:
        assert exported.results[q]["size_bytes"] == sizes[q]
        assert exported.results[q]["max_abs_diff"] <= TOLERANCES[q]
        assert any(f"model_{q}.tflite" in line and "max |Δscore|" in line and "KiB" in line
                   for line in exported.logs)


def test_sidecar_json_and_labels(exported, trained_synthetic, check_files):
    run_labels = (trained_synthetic.run / "labels.txt").read_text(encoding="utf-8").split()
    run_config = json.loads((trained_synthetic.run / "config.json").read_text())
    assert (exported.out / "labels.txt").read_text(encoding="utf-8").split() == run_labels
    for q in QUANTIZATIONS:
        meta = json.loads((exported.out / f"model_{q}.json").read_text())
        assert meta["quantization"] == q
        assert meta["labels"] == run_labels
        assert meta["sample_rate_hz"] == SR and meta["window_samples"] == WINDOW and meta["window_s"] == 2.0
        assert meta["input"]["shape"] == [1, WINDOW] and meta["output"]["shape"] == [1, len(run_labels)]
        assert meta["birdnet_tf_version"] == run_config["birdnet_tf_version"]
        assert meta["config"]["data"] == run_config["data"] and meta["config"]["model"] == run_config["model"]
        assert meta["size_bytes"] == (exported.out / f"model_{q}.tflite").stat().st_size
        v = meta["verification"]
        assert v["windows"] > 3 and v["test_signals"] == ["silence", "noise", "tone"]
        assert v["recordings"] == len(expand_inputs(check_files)[0])
        assert 0 <= v["max_abs_diff"] <= v["tolerance"] == TOLERANCES[q]
        assert 0 <= v["mean_abs_diff"] <= v["max_abs_diff"] and 0 <= v["top1_agreement"] <= 1
        model = TFLiteModel(exported.out / f"model_{q}.tflite")
        assert model.labels == run_labels and model.sample_rate_hz == SR
        assert model.config.data.excerpt_s == 2.0


@pytest.mark.parametrize("n_fft", [1024, 512, 1023])
def test_quantization_safe_spectrogram_equals_the_default_one(windows, n_fft):
    """Same log-mel as the trained layer (float32 rounding), and as a float64 reference."""
    from birdnet_tf.frontend import MelSpectrogram

    default = MelSpectrogram(SR, n_fft, 256, 80, 150.0, 10000.0)
    safe = MelSpectrogram.from_config({**default.get_config(), "quantization_safe": True})
    x = windows[:4]
    log_default, log_safe = np.log(default(x).numpy() + 1e-6), np.log(safe(x).numpy() + 1e-6)
    assert np.abs(log_safe - log_default).max() < 2e-3  # measured 7e-4 (n_fft 1024)
    frames = default.frames(tf.constant(x)).numpy().astype(np.float64)
    window = tf.signal.hann_window(n_fft).numpy().astype(np.float64)
    power = np.abs(np.fft.rfft(frames * window, n=n_fft, axis=-1)) ** 2
    truth = np.log(power @ default.mel_matrix.numpy().astype(np.float64) + 1e-6)
    assert np.abs(log_safe - truth).max() < 2e-3  # measured 5e-4 (n_fft 1024)
    assert np.abs(log_default - truth).max() < 2e-3


@pytest.mark.parametrize(("quantization", "safe_max", "unsafe_min"), [("float16", 0.05, 0.5), ("int8", 0.01, 5.0)])
def test_quantized_frontend_keeps_quiet_bands_only_in_its_safe_form(windows, quantization, safe_max, unsafe_min):
    """Log-mel of a converted frontend vs Keras on real windows; measured safe 0.013 / 6e-4, unsafe 2.5 / 15."""
    import keras

    from birdnet_tf.frontend import MagnitudeScaling, MelSpectrogram

    wave = keras.Input((None,), name="waveform")
    frontend = keras.Model(wave, MagnitudeScaling("log", 1e-6)(MelSpectrogram(SR)(wave)))
    expected = frontend(windows).numpy()
    meta = {"labels": [], "sample_rate_hz": SR, "window_samples": WINDOW, "quantization": quantization}
    errors = {}
    for safe in (True, False):
        content = convert(frontend, quantization, WINDOW, safe_frontend=safe)
        got = TFLiteModel(f"frontend_{safe}.tflite", content=content, meta=meta)(windows)
        errors[safe] = np.abs(got - expected).max()
    assert errors[True] < safe_max < unsafe_min < errors[False], errors


def test_inputs_of_other_lengths_are_looped_or_cut(exported, windows):
    model = TFLiteModel(exported.out / "model_float32.tflite")
    long = np.concatenate([windows[:2], windows[2:4]], axis=1)  # two windows side by side
    np.testing.assert_allclose(model(long), model(windows[:2]), atol=1e-6)
    short = windows[:2, :SR // 2]
    looped = np.stack([np.resize(row, WINDOW) for row in short])
    np.testing.assert_allclose(model(short), model(looped), atol=1e-6)
    assert model(windows[0]).shape == (1, model.n_classes)  # one 1-D waveform
    with pytest.raises(BirdnetError, match="batch, samples"):
        model(np.zeros((1, 2, 3), np.float32))


def test_dynamic_batch_conversion_resizes_in_litert(trained_synthetic, exported, windows):
    content = convert(trained_synthetic.run, "float32", batch=None)
    meta = json.loads((exported.out / "model_float32.json").read_text())
    dynamic = TFLiteModel("dynamic.tflite", content=content, meta=meta)
    assert dynamic.dynamic_batch
    fixed = TFLiteModel(exported.out / "model_float32.tflite")
    np.testing.assert_allclose(dynamic(windows[:5]), fixed(windows[:5]), atol=1e-5)
    np.testing.assert_allclose(dynamic(windows[:2]), fixed(windows[:2]), atol=1e-5)  # resized again


def test_nan_guard_fires_on_a_flatbuffer_with_unfrozen_variables(trained_synthetic, exported, reference, windows):
    """The REFERENCE §4 trap, built for real: a concrete function of the Keras model converted directly."""
    from birdnet_tf.models.build import load_keras_model

    model = load_keras_model(trained_synthetic.run / "best.keras")
    fn = tf.function(lambda waveform: {"scores": model(waveform, training=False)},
                     input_signature=[tf.TensorSpec([1, WINDOW], tf.float32, name="waveform")])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    content = converter.convert()
    with pytest.raises(BirdnetError, match="unfrozen variables"):
        check_builtin_only(content)
    meta = json.loads((exported.out / "model_float32.json").read_text())
    broken = TFLiteModel("unfrozen.tflite", content=content, meta=meta)
    raw = broken(windows[:2])
    assert np.isnan(raw).any(), "LiteRT no longer returns NaN here; build another NaN case"
    with pytest.raises(BirdnetError, match="NaN or infinite"):
        verify(broken, reference, windows)


def test_verify_figures_and_tolerance(exported, reference, windows):
    model = TFLiteModel(exported.out / "model_int8.tflite")
    figures = verify(model, reference, windows)
    got, ref = model(windows), reference(windows)
    assert figures["windows"] == len(windows)
    assert figures["max_abs_diff"] == pytest.approx(np.abs(got - ref).max(), abs=1e-7)
    assert figures["top1_agreement"] == pytest.approx(np.mean(got.argmax(1) == ref.argmax(1)))
    assert figures["tolerance"] == TOLERANCES["int8"]
    assert figures["max_abs_diff"] > 0  # int8 weights really change the scores
    with pytest.raises(BirdnetError, match="tolerance"):
        verify(model, reference, windows, tolerance=figures["max_abs_diff"] / 2)


def test_bad_arguments_are_refused_before_converting(trained_synthetic, tmp_path):
    with pytest.raises(BirdnetError, match="receptive field"):
        convert(trained_synthetic.run, "float32", window_samples=2000)
    with pytest.raises(BirdnetError, match="unknown quantization"):
        convert(trained_synthetic.run, "int4")
    with pytest.raises(BirdnetError, match="no sidecar"):
        (tmp_path / "x.tflite").write_bytes(b"x")
        TFLiteModel(tmp_path / "x.tflite")
    with pytest.raises(BirdnetError, match="not a run folder"):
        export_tflite(tmp_path, tmp_path / "out")


def test_a_model_needing_flex_ops_is_refused():
    """Slicing a complex tensor has no TFLite built-in (it would need SELECT_TF_OPS)."""
    import keras

    class ComplexSlice(keras.layers.Layer):
        def call(self, x):
            spectrum = tf.signal.rfft(x)
            return tf.math.abs(tf.concat([spectrum[:, 1:], spectrum[:, :1]], axis=-1))

    wave = keras.Input((None,), name="waveform")
    model = keras.Model(wave, ComplexSlice()(wave))
    with pytest.raises(BirdnetError, match="built-in ops only: TF Select ops: .*StridedSlice"):
        convert(model, "float32", 1024)


def test_cli_refuses_an_existing_output(trained_synthetic, tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    (out / "model_int8.tflite").write_bytes(b"keep me")
    rc, stdout, err = run_cli(["tflite", str(trained_synthetic.run), "--out", str(out), "--quantization", "int8"])
    assert rc == 2
    assert "already exists" in err and "model_int8.tflite" in err and "--force" in err
    assert (out / "model_int8.tflite").read_bytes() == b"keep me"
    assert sorted(p.name for p in out.iterdir()) == ["model_int8.tflite"]


def test_force_replaces_only_models_this_command_wrote(exported, trained_synthetic, tmp_path):
    """issue 12's --force rule: a folder of someone else's model_int8.tflite and a parent of
    outputs are refused even with --force (before any conversion); a folder tflite wrote may be."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "model_int8.tflite").write_bytes(b"keep me")
    rc, _, err = run_cli(["tflite", str(trained_synthetic.run), "--out", str(theirs), "--quantization", "int8",
                          "--force"])
    assert rc == 2 and "not written by birdnet-tf tflite" in err
    assert (theirs / "model_int8.tflite").read_bytes() == b"keep me"
    parent = tmp_path / "parent"
    (parent / "run").mkdir(parents=True)
    (parent / "run" / "state.json").write_text("{}")
    (parent / "labels.txt").write_text("a\n")
    with pytest.raises(BirdnetError, match="never replaces a parent"):
        check_outputs(parent, ["int8"], force=True)
    assert (exported.out / TFLITE_MARKER).is_file()
    check_outputs(exported.out, ["int8"], force=True)  # its own folder: may be replaced
    with pytest.raises(BirdnetError, match="pass --force"):
        check_outputs(exported.out, ["int8"], force=False)


def test_cli_default_verifies_on_the_runs_validation_files_and_never_writes_a_failing_model(
        trained_synthetic, tmp_path, monkeypatch):
    """The CLI end to end (one conversion per quantization, halves included): real int8 scores against
    the real SavedModel, with a tolerance no int8 model meets, so float32 is written and int8 is not."""
    import pandas as pd

    import birdnet_tf.tflite as tflite

    monkeypatch.setitem(tflite.TOLERANCES, "int8", 1e-9)
    out = tmp_path / "models"
    rc, stdout, err = run_cli(["tflite", str(trained_synthetic.run), "--out", str(out),
                               "--quantization", "float32", "int8"])
    assert rc != 0 and "1 quantization(s) failed verification; written: float32" in err
    assert "model_int8.tflite: verification FAILED, not written" in stdout + err
    n_val = int((pd.read_csv(trained_synthetic.run / "split.csv")["split"] == "val").sum())
    assert f"run's {n_val} validation recording(s)" in stdout
    assert "model_float32.tflite" in stdout and "max |Δscore|" in stdout
    assert sorted(p.name for p in out.iterdir()) == [TFLITE_MARKER, "body_float32.tflite", "embed_float32.tflite",
                                                    "front_float32.tflite", "labels.txt", "model_float32.json",
                                                    "model_float32.tflite"]
    meta = json.loads((out / "model_float32.json").read_text())
    assert meta["verification"]["recordings"] == n_val
    assert meta["verification"]["reference"] == "temporary SavedModel export of the run"
    assert meta["verification"]["max_abs_diff"] <= TOLERANCES["float32"]


def test_every_quantization_gets_verified_whole_recording_halves(exported):
    """float16 and int8 halves pass the same tolerances as their window models (LiteRT vs SavedModel engines)."""
    for q in QUANTIZATIONS:
        whole = json.loads((exported.out / f"model_{q}.json").read_text())["whole_recording"]
        assert (exported.out / whole["front"]).is_file() and (exported.out / whole["body"]).is_file()
        check = whole["verification"]
        assert check["windows"] >= 10 and 0 <= check["max_abs_diff"] <= TOLERANCES[q]
        assert check["top1_agreement"] >= 0.9
        embed = whole["embed_verification"]  # the embedding half (tests/test_lite_embed.py runs it)
        assert embed["max_rel_diff"] <= EMBED_TOLERANCES[q] and embed["min_cosine"] >= 0.99
    marker = json.loads((exported.out / TFLITE_MARKER).read_text())
    assert {f"{h}_{q}.tflite" for h in ("front", "body") for q in QUANTIZATIONS} <= set(marker["files"])

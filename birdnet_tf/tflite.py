"""``birdnet-tf tflite``: TFLite flatbuffers of a run's model, verified against its SavedModel.

Contract of one output (``model_<quantization>.tflite`` + ``model_<quantization>.json``)::

    input   waveform float32 [1, window_samples] at the model's rate (one fixed-length window)
    output  scores   float32 [1, classes] in labels order
    ops     TFLite built-ins only (no SELECT_TF_OPS / Flex, no custom ops, no resource variables)

Beside each window model, the whole-recording halves ``front_<q>.tflite`` and
``body_<q>.tflite`` (:func:`convert_whole`: fixed-size chunks and segments, named in the
sidecar's ``whole_recording``), verified against the SavedModel's whole-recording engine
(:func:`verify_whole`) and run without TensorFlow by :mod:`birdnet_tf.lite`; and the embedding
half ``embed_<q>.tflite`` (:func:`convert_embed`: frames → per-step features, for ``birdnet-tf
embed``/``search`` on the folder), verified against the SavedModel's embeddings
(:func:`verify_embeddings`).

Audio-only runs only: a run trained with metadata (``metadata.use`` only / combined) is
refused up front (:func:`check_audio_only`).

The sidecar ``model_<q>.json`` holds the labels, the run's config, the quantization,
the window, the package version and the verification figures; ``labels.txt`` is
written beside them. Quantizations (:data:`QUANTIZATIONS`): ``float32``; ``float16``
(weights stored as float16, computed in float32); ``int8`` (dynamic range: int8
weights, no representative dataset).

How the conversion avoids the known traps (REFERENCE §4 and measurements on xc-pr20):

* The Keras model goes through :class:`keras.export.ExportArchive` to a temporary
  SavedModel and ``TFLiteConverter.from_saved_model``; converting a concrete function of
  a Keras 3 model leaves its variables unfrozen, and LiteRT then returns all-NaN without
  an error. :func:`convert` rejects any flatbuffer that still reads variables.
* For float16 and int8 the spectrogram layer is switched to its
  ``quantization_safe`` form (:class:`birdnet_tf.frontend.MelSpectrogram`): a float16
  Hann window leaks loud bands into quiet ones (max |Δscore| 0.11 on real recordings),
  and int8 dynamic-range quantization of the mel filterbank quantizes each frame's power
  spectrum to 8 bits (top-1 agreement with the SavedModel fell to 23 %). So the int8
  model keeps the filterbank (41k weights) in float32.
* ``convert(..., batch=None)`` gives a dynamic batch dimension that LiteRT's
  ``resize_tensor_input`` sets (tested); a batch-1 flatbuffer cannot be resized (XNNPACK
  refuses). The window length stays fixed: the ``birdnet-tf tflite`` files are batch 1.

Every flatbuffer is checked against the SavedModel on windows of real recordings before
it is written (:func:`verify`, tolerances in :data:`TOLERANCES`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from birdnet_tf.errors import BirdnetError, about
from birdnet_tf.fileio import refuse_parent_of_outputs
from birdnet_tf.lite.runtime import TFLiteModel, sidecar_path  # noqa: F401 - public here too (moved)

#: Supported quantizations, in the order they are written.
QUANTIZATIONS = ("float32", "float16", "int8")

#: Largest |TFLite score - SavedModel score| (scores in [0, 1]) :func:`verify` accepts.
#: Measured on five trained runs of the default architecture: four on xc-pr20 (456
#: windows of its 41 validation recordings each) and the demo run (21 windows):
#:
#: * ``float32``: the same arithmetic in another order (XNNPACK kernels, TFLite's FFT);
#:   measured ≤ 1.7e-5. 1e-4 leaves 6× headroom and stays below the smallest change that
#:   rounding the weights to float16 caused (5.6e-4).
#: * ``float16``: every weight rounded to 11 significant bits; measured 5.6e-4 … 5.8e-3
#:   (0.11 before the frontend's ``quantization_safe`` form). 2e-2 = 3.4× the largest.
#: * ``int8``: int8 weights and 8-bit activations inside the convolutions shift logits by
#:   a few hundredths, which a confident softmax turns into score changes of a few per
#:   cent: measured 2.7e-3 … 0.047, top-1 agreement 98–100 %. 0.1 = 2.1× the largest;
#:   with the mel filterbank quantized too, the difference reached 0.9999.
TOLERANCES = {"float32": 1e-4, "float16": 2e-2, "int8": 0.1}

#: Largest |TFLite − SavedModel| of an embedding component, relative to the largest |component| of
#: the SavedModel's vectors, that :func:`verify_embeddings` accepts (features have no fixed range).
#: Measured on the demo run (``runs/demo``, 128-dim, 78 windows of the test signals and 4 xc-pr20
#: recordings): 6.6e-6 (float32), 1.6e-3 (float16), 0.022 (int8; least cosine similarity 0.9992),
#: so 15×, 12× and 4.6× headroom; the float32 bound is the window scores' 1e-4.
EMBED_TOLERANCES = {"float32": 1e-4, "float16": 2e-2, "int8": 0.1}

#: TFLite operators that mean the variables were not frozen (LiteRT then returns NaN).
_VARIABLE_OPS = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}


# ------------------------------------------------------------------ conversion
def _load_run(run_dir: str | os.PathLike, model_file: str = "best.keras"):
    """(keras model, config, labels, extra) of a run folder (see :func:`birdnet_tf.export.load_run`)."""
    from birdnet_tf.export import load_run

    return load_run(run_dir, model_file)


def check_audio_only(run_dir: str | os.PathLike) -> None:
    """Refuses a run trained with metadata (``metadata.use`` only / combined) before any work.

    The TFLite contract is one waveform input; such runs also (or only) take a metadata row.
    A folder without ``config.json`` passes here (loading it says what is wrong).

    Raises:
        BirdnetError: The run's ``metadata.use`` is not ``none``.
    """
    from birdnet_tf.config import read_config_json

    config = Path(run_dir) / "config.json"
    if not config.is_file():
        return
    cfg, _ = read_config_json(config)
    _refuse_metadata(cfg.metadata.use, run_dir)


def _refuse_metadata(use: str, where, what: str = "run") -> None:
    if use != "none":
        raise BirdnetError(f"{where}: TFLite conversion supports audio-only models; this {what} uses metadata "
                           f"(metadata.use={use})")


def quantization_safe_model(model):
    """``model`` with every :class:`~birdnet_tf.frontend.MelSpectrogram` in its ``quantization_safe`` form.

    All other layers (and so their weights) are shared with ``model``; a learnable
    filterbank's positions are copied into its clone. Returns ``model`` itself when it has no such layer.
    """
    import keras

    from birdnet_tf.frontend import MelSpectrogram

    if not any(isinstance(layer, MelSpectrogram) for layer in model.layers):
        return model

    def clone(layer):
        if isinstance(layer, MelSpectrogram):
            safe = MelSpectrogram.from_config({**layer.get_config(), "quantization_safe": True})
            if layer.weights:  # a learnable filterbank: the same (trained) filter positions
                safe.build(None)
                safe.set_weights(layer.get_weights())
            return safe
        return layer

    return keras.models.clone_model(model, clone_function=clone)


def flatbuffer_ops(content: bytes) -> list[str]:
    """Names of the operator codes a TFLite flatbuffer uses (custom ops as ``CUSTOM:<name>``)."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(content, 0)
    ops = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            ops.add(f"CUSTOM:{(code.CustomCode() or b'?').decode()}")
        else:
            ops.add(names.get(builtin, str(builtin)))
    return sorted(ops)


def check_builtin_only(content: bytes, where: str = "TFLite model") -> list[str]:
    """Raises :class:`BirdnetError` unless ``content`` uses only built-in, variable-free ops; returns the ops."""
    ops = flatbuffer_ops(content)
    custom = [op for op in ops if op.startswith("CUSTOM:")]
    if custom:
        raise BirdnetError(f"{where}: uses non-built-in ops {', '.join(custom)} (Flex/SELECT_TF_OPS or custom); "
                           "a plain LiteRT runtime cannot run it")
    variables = sorted(_VARIABLE_OPS & set(ops))
    if variables:
        raise BirdnetError(f"{where}: reads unfrozen variables ({', '.join(variables)}); LiteRT would return NaN")
    return ops


def convert(model_or_run, quantization: str = "float32", window_samples: int | None = None,
            batch: int | None = 1, safe_frontend: bool = True) -> bytes:
    """A TFLite flatbuffer of a Keras model: ``waveform float32 [batch, window_samples]`` → ``scores``.

    Args:
        model_or_run: A run folder (its ``best.keras`` and ``config.json``) or a Keras model.
        quantization: ``float32``, ``float16`` (float16 weights) or ``int8`` (dynamic range).
        window_samples: Fixed input length in samples; default (runs only) ``data.excerpt_s``
            × the sample rate. Must be at least the model's receptive field.
        batch: Fixed batch size of the input (1 = the contract of ``birdnet-tf tflite``), or
            ``None`` for a dynamic batch dimension that LiteRT's ``resize_tensor_input`` sets.
        safe_frontend: For float16 and int8, convert the spectrogram layers in their
            ``quantization_safe`` form (:func:`quantization_safe_model`). ``False`` only to
            see what it prevents: quiet bands lost to leakage (float16) or 8-bit spectra (int8).

    Returns:
        The flatbuffer; built-in ops only (asserted: conversion with ``TFLITE_BUILTINS``
        alone, then :func:`check_builtin_only`).

    Raises:
        BirdnetError: Unknown quantization, a window shorter than the receptive field, or a
            model that cannot be converted with built-in ops.
    """
    if quantization not in QUANTIZATIONS:
        raise BirdnetError(f"unknown quantization '{quantization}'; choose from {', '.join(QUANTIZATIONS)}")
    if isinstance(model_or_run, (str, os.PathLike)):
        from birdnet_tf.models.build import min_samples

        check_audio_only(model_or_run)
        model, cfg, _, _ = _load_run(model_or_run)
        window_samples = window_samples or cfg.excerpt_samples
        shortest = min_samples(model, cfg)
        if window_samples < shortest:
            raise BirdnetError(f"{model_or_run}: a window of {window_samples} samples is shorter than the model's "
                               f"receptive field ({shortest} samples = {shortest / cfg.audio.sample_rate_hz:.2f} s)")
    else:
        from birdnet_tf.models.metadata import has_metadata_input, has_waveform_input

        model = model_or_run
        if has_metadata_input(model):
            _refuse_metadata("combined" if has_waveform_input(model) else "only", f"model '{model.name}'", "model")
        if not window_samples:
            raise BirdnetError("convert: window_samples is needed when a model (not a run folder) is given")
    window_samples = int(window_samples)
    if quantization != "float32" and safe_frontend:
        model = quantization_safe_model(model)

    import tensorflow as tf

    return _flatbuffer(model, "scores", tf.TensorSpec([batch, window_samples], tf.float32, name="waveform"),
                       quantization, "TFLite model")


def _flatbuffer(model, output: str, spec, quantization: str, what: str) -> bytes:
    """``model`` (one input, ``spec``) → a built-in-only flatbuffer with output ``output``.

    Goes through :class:`keras.export.ExportArchive` and a temporary SavedModel (see the
    module docstring: converting a concrete function leaves the variables unfrozen).
    """
    import keras
    import tensorflow as tf

    def serve(x):
        return {output: tf.cast(model(x, training=False), tf.float32)}  # a no-op unless mixed precision

    with tempfile.TemporaryDirectory(prefix="birdnet-tflite-") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve, input_signature=[spec])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no SELECT_TF_OPS
        if quantization == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantization == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative dataset: dynamic range
        try:
            content = converter.convert()
        except Exception as e:  # noqa: BLE001 - the converter raises several types with long MLIR dumps
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            reason = next((line for line in lines if line.startswith("TF Select ops:")),  # the ops it lacks
                          lines[0] if lines else type(e).__name__)
            raise BirdnetError(f"TFLite conversion ({quantization}) failed with built-in ops only: {reason[:300]}") \
                from None
    check_builtin_only(content, f"{what} ({quantization})")
    return content


#: Default audio per call of the whole-recording ``front`` flatbuffer, and per ``body`` segment.
WHOLE_FRONT_S = 10.0
WHOLE_SEGMENT_S = 10.0


def convert_whole(model, cfg, quantization: str = "float32", front_s: float = WHOLE_FRONT_S,
                  segment_s: float = WHOLE_SEGMENT_S, safe_frontend: bool = True) -> tuple[bytes, bytes, dict]:
    """The whole-recording halves of a Keras model as fixed-size TFLite flatbuffers: ``(front, body, facts)``.

    ``front``: ``waveform float32 [1, front_samples]`` → ``frames [1, front_frames, bands]``
    (pointwise in time, so a recording is framed in chunks, the last one zero-padded);
    ``body``: ``frames float32 [batch, segment_frames, bands]`` (band-centred when
    ``facts["center"]``) → ``logits [batch, segment_steps, classes]`` with a dynamic batch.
    The halves are those of :func:`birdnet_tf.models.surgery.split_model` (the front in its
    ``quantization_safe`` form for float16/int8); ``facts`` holds its facts, the step
    geometry and the fixed sizes, as :class:`birdnet_tf.lite.LiteModel` reads them.

    Raises:
        BirdnetError: A model that cannot be split (see ``split_model``) or converted.
    """
    import tensorflow as tf

    from birdnet_tf.models.surgery import probe_geometry, split_model

    if quantization not in QUANTIZATIONS:
        raise BirdnetError(f"unknown quantization '{quantization}'; choose from {', '.join(QUANTIZATIONS)}")
    front, body, facts = split_model(model)
    if quantization != "float32" and safe_frontend:
        front = quantization_safe_model(front)  # the spectrogram lives in the front half
    if facts.get("metadata"):
        _refuse_metadata("combined", f"model '{model.name}'", "model")
    fe, sr = cfg.frontend, cfg.audio.sample_rate_hz
    geo = probe_geometry(body, fe.n_mels, fe.hop_length, fe.n_fft, sr)
    front_frames = max(1, int(round(front_s * sr / geo.hop)))
    front_samples = (front_frames - 1) * geo.hop + geo.n_fft
    segment_steps = max(1, int(round(segment_s * sr / geo.stride_samples)))
    segment_frames = geo.field + (segment_steps - 1) * geo.stride
    front_tfl = _flatbuffer(front, "frames", tf.TensorSpec([1, front_samples], tf.float32, name="waveform"),
                            quantization, "TFLite front")
    body_tfl = _flatbuffer(body, "logits", tf.TensorSpec([None, segment_frames, fe.n_mels], tf.float32,
                                                         name="frames"), quantization, "TFLite body")
    facts = {**facts, "stride_frames": geo.stride, "field_frames": geo.field, "hop_samples": geo.hop,
             "n_fft": geo.n_fft, "n_mels": fe.n_mels, "front_samples": front_samples, "front_frames": front_frames,
             "segment_frames": segment_frames, "segment_steps": segment_steps}
    return front_tfl, body_tfl, facts


def convert_embed(model, cfg, quantization: str = "float32", segment_frames: int | None = None) -> tuple[bytes, int]:
    """The embedding half of a Keras model as a TFLite flatbuffer: ``(embed, dim)``.

    ``embed``: ``frames float32 [batch, segment_frames, bands]`` (the ``body``'s input, band-centred
    when the model centres) → ``features [batch, segment_steps, dim]``, the body cut before its class
    logits (:func:`~birdnet_tf.models.surgery.split_model` with ``features``: what the export's
    ``features`` signature gives). A window's embedding is the mean of its steps' features, taken in
    NumPy by the streaming engine (:meth:`birdnet_tf.infer.whole.WholeRecordingModel.window_vectors`),
    as the export's ``embeddings`` signature takes it. ``segment_frames``: the body's (default: the
    segment of :func:`convert_whole`'s defaults), so the one front chunking serves both.

    Raises:
        BirdnetError: A model that cannot be split or converted.
    """
    import tensorflow as tf

    from birdnet_tf.models.surgery import probe_geometry, split_model

    if quantization not in QUANTIZATIONS:
        raise BirdnetError(f"unknown quantization '{quantization}'; choose from {', '.join(QUANTIZATIONS)}")
    _, features, facts = split_model(model, features=True)
    fe = cfg.frontend
    if segment_frames is None:
        geo = probe_geometry(features, fe.n_mels, fe.hop_length, fe.n_fft, cfg.audio.sample_rate_hz)
        steps = max(1, int(round(WHOLE_SEGMENT_S * cfg.audio.sample_rate_hz / geo.stride_samples)))
        segment_frames = geo.field + (steps - 1) * geo.stride
    content = _flatbuffer(features, "features", tf.TensorSpec([None, int(segment_frames), fe.n_mels], tf.float32,
                                                              name="frames"), quantization, "TFLite embedding half")
    return content, int(facts["dim"])


# ---------------------------------------------------------------- verification
def verify(tflite_model: TFLiteModel, reference, audio_windows, tolerance: float | None = None,
           batch_size: int = 32) -> dict:
    """Scores of the TFLite model and the reference on the same windows, compared.

    Args:
        tflite_model: A :class:`TFLiteModel`.
        reference: Any callable ``float32 [batch, samples] → [batch, classes]``, normally
            the run's SavedModel (:class:`birdnet_tf.export.ExportedModel`).
        audio_windows: ``float32 [windows, tflite_model.window_samples]``.
        tolerance: Largest accepted max |Δscore|; default ``TOLERANCES[quantization]``.

    Returns:
        ``windows``, ``max_abs_diff``, ``mean_abs_diff``, ``top1_agreement`` (fraction of
        windows whose best class agrees), ``tolerance``, ``quantization`` and
        ``ms_per_window`` (TFLite, on this machine).

    Raises:
        BirdnetError: NaN or infinite scores from either model, or a max difference above
            the tolerance; the message names the file and the figures.
    """
    windows = np.asarray(audio_windows, dtype=np.float32)
    if windows.ndim != 2 or not len(windows):
        raise BirdnetError(f"{tflite_model.path}: verify needs [windows, samples] audio, got shape {windows.shape}")
    tol = TOLERANCES.get(tflite_model.quantization, TOLERANCES["int8"]) if tolerance is None else float(tolerance)
    from birdnet_tf.infer.sliding import score_windows

    start = time.perf_counter()
    got = score_windows(tflite_model, windows, len(windows))  # one call: a dynamic-batch model runs once
    ms = 1000 * (time.perf_counter() - start) / len(windows)
    ref = score_windows(reference, windows, batch_size)
    if got.shape != ref.shape:
        raise BirdnetError(f"{tflite_model.path}: scores have shape {got.shape}, the reference's {ref.shape}")
    for name, scores in (("TFLite model", got), ("reference SavedModel", ref)):
        bad = ~np.isfinite(scores)
        if bad.any():
            rows = int(bad.any(axis=1).sum())
            raise BirdnetError(f"{tflite_model.path}: the {name} gives NaN or infinite scores on {rows} of "
                               f"{len(windows)} windows ({tflite_model.quantization})")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    result = {
        "quantization": tflite_model.quantization,
        "windows": int(len(windows)),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "top1_agreement": float(np.mean(got.argmax(axis=1) == ref.argmax(axis=1))),
        "tolerance": tol,
        "ms_per_window": round(ms, 3),
    }
    if result["max_abs_diff"] > tol:
        raise BirdnetError(f"{tflite_model.path}: scores differ from the reference SavedModel by up to "
                           f"{result['max_abs_diff']:.3g} (tolerance {tol:g} for {tflite_model.quantization}; "
                           f"mean {result['mean_abs_diff']:.2g}, top-1 agreement "
                           f"{100 * result['top1_agreement']:.1f}% on {len(windows)} windows)")
    return result


def check_signals(window_samples: int, sample_rate_hz: int) -> dict[str, np.ndarray]:
    """Silence, white noise and a 3-kHz tone of one window each (float32)."""
    t = np.arange(window_samples) / sample_rate_hz
    rng = np.random.default_rng(0)
    return {
        "silence": np.zeros(window_samples, np.float32),
        "noise": (0.1 * rng.standard_normal(window_samples)).astype(np.float32),
        "tone": (0.5 * np.sin(2 * np.pi * 3000.0 * t)).astype(np.float32),
    }


def audio_windows(inputs: list[str], window_samples: int, sample_rate_hz: int, max_per_file: int | None = 8,
                  log=print) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Windows of ``window_samples`` cut from audio files and folders (looped when a file is shorter).

    Each file gives windows every ``window_samples`` (the last one aligned to its end), at
    most ``max_per_file`` spread evenly over it.

    Returns:
        ``(windows float32 [n, window_samples], files used, skipped (path, reason))``.
    """
    from birdnet_tf.data.audio import load_audio
    from birdnet_tf.grid import window_starts
    from birdnet_tf.errors import AudioDecodeError
    from birdnet_tf.infer.predict import expand_inputs

    files, skipped = expand_inputs([str(p) for p in inputs])
    parts, used = [], []
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a low source rate does not matter for a comparison
                x, _ = load_audio(path, sample_rate_hz)
        except AudioDecodeError as e:
            skipped.append((path, str(e)))
            continue
        starts = window_starts(len(x), window_samples, window_samples, max_per_file)
        for s in starts:
            seg = x[s:s + window_samples]
            parts.append(np.resize(seg, window_samples) if len(seg) < window_samples else seg)
        used.append(path)
    for path, reason in skipped:
        log(f"warning: skipped {about(path, reason)}")
    windows = np.stack(parts).astype(np.float32) if parts else np.zeros((0, window_samples), np.float32)
    return windows, used, skipped


def validation_audio(run_dir: str | os.PathLike) -> list[str]:
    """The run's validation recordings from ``split.csv`` that exist on this machine.

    The prepared WAV (``wav_path``) when it is still there, else the original file
    (``key`` under the run's ``data_dir``); recordings found in neither place are left out.
    """
    from birdnet_tf.config import read_config_json
    from birdnet_tf.runs import read_split

    run = Path(run_dir)
    try:
        rows = read_split(run / "split.csv", "val")
    except BirdnetError:  # no split.csv, or none with validation files: nothing to verify on
        return []
    data_dir = ""
    if (run / "config.json").is_file():
        data_dir = str(read_config_json(run / "config.json")[1].get("data_dir") or "")
    found = []
    for _, row in rows.iterrows():
        for candidate in (row.get("wav_path", ""), str(Path(data_dir) / row.get("key", "")) if data_dir else ""):
            if candidate and Path(candidate).is_file():
                found.append(candidate)
                break
    return found


# ---------------------------------------------------------------------- export
def output_paths(out_dir: str | os.PathLike, quantizations) -> list[Path]:
    out = Path(out_dir)
    return [out / "labels.txt"] + [out / f"model_{q}.{ext}" for q in quantizations for ext in ("tflite", "json")] \
        + [out / f"{half}_{q}.tflite" for q in quantizations for half in ("front", "body", "embed")]


def check_outputs(out_dir: str | os.PathLike, quantizations, force: bool = False) -> None:
    """Raises :class:`BirdnetError` for an unknown quantization or (unless ``force``) an existing output."""
    unknown = [q for q in quantizations if q not in QUANTIZATIONS]
    if unknown or not quantizations:
        raise BirdnetError(f"unknown quantization {', '.join(unknown) or '(none given)'}; "
                           f"choose from {', '.join(QUANTIZATIONS)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BirdnetError(f"{out}: exists and is not a folder")
    existing = [p for p in output_paths(out, quantizations) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise BirdnetError(f"{existing[0]}: already exists; choose another --out or pass --force")
    if existing:  # the --force rule: only what this command wrote, never inside a parent of outputs
        refuse_parent_of_outputs(out)
        if not written_by_tflite(out):
            raise BirdnetError(f"{existing[0]}: was not written by birdnet-tf tflite (no {TFLITE_MARKER} in "
                               f"{out}); --force only replaces its own files — choose another --out")


TFLITE_MARKER = ".birdnet_tf_tflite.json"
"""Marker file of a folder ``export_tflite`` wrote into (``--force`` replaces its models only there)."""


def written_by_tflite(out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` holds TFLite models this package wrote: its marker file, or (for
    folders written before the marker existed) a ``model_<q>.json`` sidecar of this package."""
    out = Path(out_dir)
    if (out / TFLITE_MARKER).is_file() and not (out / TFLITE_MARKER).is_symlink():
        return True
    for q in QUANTIZATIONS:
        try:
            meta = json.loads((out / f"model_{q}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and "birdnet_tf_version" in meta and meta.get("quantization") == q:
            return True
    return False


#: Whole-recording verification: at most this many recordings, each cut to its first this many seconds.
WHOLE_CHECK_FILES = 8
WHOLE_CHECK_S = 30.0


def whole_check_sources(signals: dict[str, np.ndarray], files: list[str], sample_rate_hz: int) -> list[np.ndarray]:
    """Recordings the whole-recording halves are verified on: the test signals one after the other,
    then the first :data:`WHOLE_CHECK_S` s of up to :data:`WHOLE_CHECK_FILES` of ``files`` (decoded)."""
    from birdnet_tf.data.audio import load_audio
    from birdnet_tf.errors import AudioDecodeError

    sources = [np.concatenate(list(signals.values())).astype(np.float32)]
    for path in files[:WHOLE_CHECK_FILES]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x, _ = load_audio(path, sample_rate_hz)
        except AudioDecodeError:
            continue
        sources.append(np.asarray(x[:int(WHOLE_CHECK_S * sample_rate_hz)], np.float32))
    return sources


def verify_whole(lite, reference, sources: list[np.ndarray], window_s: float, hop_s: float,
                 quantization: str, tolerance: float | None = None, where="TFLite halves") -> dict:
    """Window scores of two whole-recording engines on the same recordings, compared.

    ``lite`` and ``reference`` are :class:`~birdnet_tf.infer.whole.WholeRecordingModel` s
    (the LiteRT halves and the SavedModel's ``front``/``body``); windows of ``window_s``
    every ``hop_s``. Returns ``windows``, ``recordings``, ``max_abs_diff``, ``mean_abs_diff``,
    ``top1_agreement``, ``tolerance``, ``window_s``, ``hop_s`` and ``seconds_per_audio_hour``
    (LiteRT, on this machine).

    Raises:
        BirdnetError: NaN scores or a max difference above the tolerance (default
            :data:`TOLERANCES` of the quantization).
    """
    tol = TOLERANCES.get(quantization, TOLERANCES["int8"]) if tolerance is None else float(tolerance)

    def scores(engine) -> np.ndarray:
        out = {i: r for i, r, err in engine.score_many(sources, window_s=window_s, hop_s=hop_s) if r is not None}
        return np.concatenate([out[i].scores for i in sorted(out)])

    start = time.perf_counter()
    got = scores(lite)
    seconds = time.perf_counter() - start
    ref = scores(reference)
    if got.shape != ref.shape:
        raise BirdnetError(f"{where}: scores have shape {got.shape}, the reference's {ref.shape}")
    if not np.isfinite(got).all():
        raise BirdnetError(f"{where}: NaN or infinite scores ({quantization})")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    audio_h = sum(len(x) for x in sources) / lite.geometry.sample_rate_hz / 3600
    result = {"windows": int(len(got)), "recordings": len(sources), "max_abs_diff": float(diff.max()),
              "mean_abs_diff": float(diff.mean()),
              "top1_agreement": float(np.mean(got.argmax(axis=1) == ref.argmax(axis=1))), "tolerance": tol,
              "window_s": window_s, "hop_s": hop_s, "seconds_per_audio_hour": round(seconds / audio_h, 1)}
    if result["max_abs_diff"] > tol:
        raise BirdnetError(f"{where}: whole-recording scores differ from the SavedModel's by up to "
                           f"{result['max_abs_diff']:.3g} (tolerance {tol:g} for {quantization}; "
                           f"{len(got)} windows of {len(sources)} recording(s))")
    return result


def verify_embeddings(lite, reference, sources: list[np.ndarray], window_s: float, hop_s: float,
                      quantization: str, tolerance: float | None = None, where="TFLite embedding half") -> dict:
    """Per-window embeddings of two whole-recording engines on the same recordings, compared.

    ``lite`` and ``reference`` are :class:`~birdnet_tf.infer.whole.WholeRecordingModel` s with
    features (the LiteRT ``front``/``embed`` halves and the SavedModel's ``front``/``features``);
    windows of ``window_s`` every ``hop_s``. Features have no fixed range, so the difference is
    taken relative to the reference's scale: ``max_rel_diff`` = max |Δ| / max |reference value|.
    Returns ``windows``, ``recordings``, ``dim``, ``max_abs_diff``, ``max_rel_diff``,
    ``min_cosine`` (the least cosine similarity of a window's two vectors: what ``search``
    ranks by), ``tolerance``, ``window_s`` and ``hop_s``.

    Raises:
        BirdnetError: NaN vectors or a ``max_rel_diff`` above the tolerance (default
            :data:`EMBED_TOLERANCES` of the quantization).
    """
    tol = EMBED_TOLERANCES.get(quantization, EMBED_TOLERANCES["int8"]) if tolerance is None else float(tolerance)
    got = np.concatenate([lite.embed(x, window_s, hop_s).vectors for x in sources]).astype(np.float64)
    ref = np.concatenate([reference.embed(x, window_s, hop_s).vectors for x in sources]).astype(np.float64)
    if got.shape != ref.shape:
        raise BirdnetError(f"{where}: vectors have shape {got.shape}, the reference's {ref.shape}")
    if not np.isfinite(got).all():
        raise BirdnetError(f"{where}: NaN or infinite vectors ({quantization})")
    diff = np.abs(got - ref)
    scale = max(float(np.abs(ref).max()), 1e-12)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)
    cosine = np.where(norms > 0, np.sum(got * ref, axis=1) / np.maximum(norms, 1e-300),
                      np.where(np.linalg.norm(got - ref, axis=1) == 0, 1.0, 0.0))
    result = {"windows": int(len(got)), "recordings": len(sources), "dim": int(got.shape[1]),
              "max_abs_diff": float(diff.max()), "max_rel_diff": float(diff.max() / scale),
              "min_cosine": float(cosine.min()), "tolerance": tol, "window_s": window_s, "hop_s": hop_s}
    if result["max_rel_diff"] > tol:
        raise BirdnetError(f"{where}: embeddings differ from the SavedModel's by up to {result['max_rel_diff']:.3g} "
                           f"of their largest value (tolerance {tol:g} for {quantization}; least cosine "
                           f"similarity {result['min_cosine']:.4f}; {len(got)} windows of {len(sources)} recording(s))")
    return result


def _whole_halves(model, cfg, q: str, meta: dict, sources: list[np.ndarray], ref, tmp: Path,
                  num_threads: int | None, embeddings: bool = True) -> dict[str, bytes]:
    """Converts and verifies the halves of ``q`` (with the embedding half when ``embeddings``: ``ref`` must
    then have the ``features`` signature); adds ``meta["whole_recording"]``; returns {file name: content}."""
    from birdnet_tf.infer.whole import WholeRecordingModel
    from birdnet_tf.lite.runtime import whole_engine

    front, body, facts = convert_whole(model, cfg, q)
    files = {f"front_{q}.tflite": front, f"body_{q}.tflite": body}
    whole = meta["whole_recording"] = {"front": f"front_{q}.tflite", "body": f"body_{q}.tflite", **facts}
    reference = WholeRecordingModel.from_export(ref)
    if embeddings:
        files[f"embed_{q}.tflite"], whole["dim"] = convert_embed(model, cfg, q, facts["segment_frames"])
        whole["embed"] = f"embed_{q}.tflite"
    check = tmp / f"whole_{q}"  # the halves as they will be written, loaded exactly as predict loads them
    check.mkdir(exist_ok=True)
    for name, content in files.items():
        (check / name).write_bytes(content)
    lite = whole_engine(check, whole, cfg, num_threads, embeddings=embeddings)
    window_s = meta["window_s"]
    whole["verification"] = verify_whole(lite, reference, sources, window_s, window_s / 2, q,
                                         where=f"front_{q}/body_{q}.tflite")
    if embeddings:
        whole["embed_verification"] = verify_embeddings(lite, reference, sources, window_s, window_s / 2, q,
                                                        where=f"embed_{q}.tflite")
    return files


def export_tflite(run_dir: str | os.PathLike, out_dir: str | os.PathLike, quantizations=QUANTIZATIONS,
                  window_s: float | None = None, check_audio: list[str] | None = None, force: bool = False,
                  log=print, reference: str | os.PathLike | None = None, num_threads: int | None = None,
                  max_windows_per_file: int | None = 8, whole: bool = True, embeddings: bool = True) -> dict[str, dict]:
    """Writes verified TFLite models of a run: ``out_dir/model_<q>.tflite`` + ``model_<q>.json`` + ``labels.txt``.

    Each quantization is converted (:func:`convert`), loaded in LiteRT and compared with
    the run's SavedModel (:func:`verify`) on silence, noise and a tone plus windows cut
    from ``check_audio``, and written only if it passes. Outputs are written atomically.

    Args:
        run_dir: Training run folder (``best.keras``, ``config.json``, ``labels.txt``).
        out_dir: Output folder (created).
        quantizations: Any of :data:`QUANTIZATIONS`.
        window_s: Input window in seconds; default ``data.excerpt_s`` of the run.
        check_audio: Audio files and folders to cut verification windows from; ``None`` or
            empty = the three test signals only (the CLI passes the run's validation files).
        force: Replace existing outputs.
        reference: An export folder of this run (``birdnet-tf export``); default: the run is
            exported to a temporary folder with :func:`birdnet_tf.export.export_model`.
        num_threads: LiteRT threads during verification.
        max_windows_per_file: Verification windows per audio file (spread over the file).
        whole: Also write the whole-recording halves ``front_<q>.tflite`` and ``body_<q>.tflite``
            (:func:`convert_whole`), verified window by window against the SavedModel's
            whole-recording engine on the test signals and the first
            :data:`WHOLE_CHECK_S` seconds of up to :data:`WHOLE_CHECK_FILES` recordings
            (:func:`verify_whole`); a model that cannot be split gets a note and none.
        embeddings: With ``whole``, also write the embedding half ``embed_<q>.tflite``
            (:func:`convert_embed`, verified by :func:`verify_embeddings` on the same recordings)
            for ``birdnet-tf embed``/``search`` on the folder; needs a reference export with the
            ``features`` signature (the default temporary one has it; an older one gets a note).

    Returns:
        ``{quantization: {"path", "size_bytes", **verification}}`` for the written models.

    Raises:
        BirdnetError: Bad arguments, existing outputs, a conversion error, or (after the
            others were written) the quantizations that failed verification.
    """
    from birdnet_tf import __version__
    from birdnet_tf.export import ExportedModel, export_model
    from birdnet_tf.fileio import atomic_path, write_json_atomic, write_text_atomic
    from birdnet_tf.models.build import min_samples

    quantizations = list(dict.fromkeys(quantizations))
    check_audio_only(run_dir)
    check_outputs(out_dir, quantizations, force)
    out = Path(out_dir)
    run = Path(run_dir)
    model, cfg, labels, extra = _load_run(run)
    sr = cfg.audio.sample_rate_hz
    if window_s is not None and window_s <= 0:
        raise BirdnetError(f"--window-s must be positive, got {window_s}")
    window = int(round(window_s * sr)) if window_s is not None else cfg.excerpt_samples
    shortest = min_samples(model, cfg)
    if window < shortest:
        raise BirdnetError(f"{run}: a window of {window / sr:.3f} s is shorter than the model's receptive field "
                           f"({shortest / sr:.3f} s); choose a longer --window-s")

    signals = check_signals(window, sr)
    windows, used, skipped = np.stack(list(signals.values())), [], []
    if check_audio:
        real, used, skipped = audio_windows(check_audio, window, sr, max_windows_per_file, log=log)
        if not len(real):
            raise BirdnetError(f"no verification audio could be read from {', '.join(map(str, check_audio[:3]))}"
                               + (f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
        windows = np.concatenate([windows, real])
    log(f"verification windows: {len(windows)} of {window / sr:g} s ({len(used)} recording(s)"
        f"{f', {len(skipped)} skipped' if skipped else ''} + silence, noise, tone)")

    with tempfile.TemporaryDirectory(prefix="birdnet-tflite-ref-") as tmp:
        if reference is None:
            ref_dir = export_model(model, cfg, labels, Path(tmp) / "export", log=lambda msg: None)
            ref_name = "temporary SavedModel export of the run"
        else:
            ref_dir = Path(reference)
            ref_name = str(ref_dir.resolve())
        ref = ExportedModel(ref_dir)
        if list(ref.labels) != list(labels) or ref.sample_rate_hz != sr:
            raise BirdnetError(f"{ref_dir}: reference export does not match {run} (labels or sample rate differ)")

        results, failures = {}, []
        whole_sources = None
        if whole and embeddings and not (ref.extra.get("whole_recording") or {}).get("features"):
            embeddings = False
            log(f"note: no embedding halves (the reference export {ref_dir} has no features signature; "
                "export the run again)")
        if whole:
            try:
                from birdnet_tf.models.surgery import split_model

                split_model(model)
                whole_sources = whole_check_sources(signals, used, sr)
            except BirdnetError as e:
                log(f"note: no whole-recording halves ({e})")
        for q in quantizations:
            content = convert(model, q, window)
            meta = {
                "birdnet_tf_version": __version__,
                "file": f"model_{q}.tflite",
                "quantization": q,
                "input": {"name": "waveform", "dtype": "float32", "shape": [1, window],
                          "meaning": "one window of audio at sample_rate_hz, samples in [-1, 1]"},
                "output": {"name": "scores", "dtype": "float32", "shape": [1, len(labels)],
                           "meaning": "class scores in labels order"},
                "sample_rate_hz": sr,
                "window_samples": window,
                "window_s": window / sr,
                "labels": list(labels),
                "ops": flatbuffer_ops(content),
                "size_bytes": len(content),
                "source_run": str(run.resolve()),
                "source_model": "best.keras",
            }
            tfl = TFLiteModel(out / meta["file"], num_threads=num_threads, content=content, meta=meta)
            try:
                figures = verify(tfl, ref, windows)
            except BirdnetError as e:
                failures.append(str(e))
                log(f"model_{q}.tflite: verification FAILED, not written: {e}")
                continue
            meta["verification"] = {**figures, "reference": ref_name, "recordings": len(used),
                                    "test_signals": list(signals), "num_threads": num_threads}
            meta["config"] = cfg.to_dict()
            halves = None
            if whole_sources is not None:
                try:
                    halves = _whole_halves(model, cfg, q, meta, whole_sources, ref, Path(tmp), num_threads,
                                           embeddings)
                except BirdnetError as e:
                    failures.append(str(e))
                    log(f"front_{q}/body_{q}.tflite: verification FAILED, model_{q} not written: {e}")
                    continue
            out.mkdir(parents=True, exist_ok=True)
            stale = out / f"embed_{q}.tflite"  # --force without embeddings: no half the new sidecar does not name
            if f"embed_{q}.tflite" not in (halves or {}) and stale.is_file():
                stale.unlink()
            for name, half in (halves or {}).items():
                with atomic_path(out / name) as part:
                    part.write_bytes(half)
            with atomic_path(out / meta["file"]) as part:
                part.write_bytes(content)
            write_json_atomic(sidecar_path(out / meta["file"]), meta)
            results[q] = {"path": str(out / meta["file"]), "size_bytes": len(content), **figures}
            log(f"wrote {out / meta['file']}: {len(content) / 1024:.0f} KiB; vs SavedModel max |Δscore| "
                f"{figures['max_abs_diff']:.2g} (tolerance {figures['tolerance']:g}), mean "
                f"{figures['mean_abs_diff']:.2g}, top-1 agreement {100 * figures['top1_agreement']:.1f}% "
                f"on {figures['windows']} windows")
            if halves:
                w = meta["whole_recording"]["verification"]
                log(f"wrote {', '.join(str(out / name) for name in halves)}: whole-recording halves; vs the "
                    f"SavedModel's whole-recording scores max |Δscore| {w['max_abs_diff']:.2g} on {w['windows']} "
                    f"windows of {w['recordings']} recording(s)")
                e = meta["whole_recording"].get("embed_verification")
                if e:
                    log(f"embeddings ({e['dim']} values) vs the SavedModel's: max |Δ| {e['max_rel_diff']:.2g} of the "
                        f"largest value (tolerance {e['tolerance']:g}), least cosine similarity {e['min_cosine']:.5f}")
    if results:
        write_text_atomic(out / "labels.txt", "".join(f"{label}\n" for label in labels))
        write_json_atomic(out / TFLITE_MARKER, {"birdnet_tf_version": __version__,
                                                 "files": sorted(p.name for p in out.glob("*.tflite"))})
    if failures:
        done = f"; written: {', '.join(results)}" if results else ""
        raise BirdnetError(f"{len(failures)} quantization(s) failed verification{done}. {failures[0]}")
    return results

"""``birdnet-tf submit`` with ensemble weights and metadata-aware members; tflite refusal; serving a combined export.

One module fixture trains a tiny audio run and a tiny combined (audio + metadata) run on
the same two-class dataset (``janbird``: a 1-kHz tone recorded in January at latitude ~10;
``julbird``: a chirp in July at ~-30) and exports them. A second audio export is the first
with its per-step logits layer perturbed (two different audio models without a second
training), and the combined model's ``meta_logits`` (zero-initialised, hardly trained in one
tiny epoch) get random weights so the metadata visibly moves the scores. Real exports,
real audio decoding, the CLI in process, real HTTP on loopback.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

tf = pytest.importorskip("tensorflow")

from conftest import TINY_SETTINGS, run_cli, synth_signal  # noqa: E402

from birdnet_tf.config import Config  # noqa: E402
from birdnet_tf.errors import BirdnetError  # noqa: E402

LABELS = ["janbird", "julbird"]
RATE_HZ = 22050
MONO_LINE = re.compile(r"^([^;]+);([^;]+);(\d+\.\d{6});(\d+)$")
QUIET = dict(log=lambda m: None, progress=False)

#: Test recordings (name → (class kind, seconds, metadata)); 4.5 s = windows at 0, 2 and 2.5 s.
TEST_FILES = {
    "t_jan.wav": ("tone1k", 4.5, {"Date": "2019-01-12", "Time": "7.30 am", "Latitude": "10.3",
                                  "Longitude": "-66.4", "Elevation": "ca. 500 m"}),
    "t_jul.wav": ("chirp2to4k", 4.5, {"Date": "2019-07-20", "Time": "18:00", "Latitude": "-30.1",
                                      "Longitude": "W 60", "Elevation": "?"}),
    "t_odd.wav": ("tone1k", 3.0, {"Date": "2019-07-02", "Time": "23:10", "Latitude": "-29.5",
                                  "Longitude": "-60.2", "Elevation": "120"}),
}
MEDIA = {name: str(1000 + i) for i, name in enumerate(TEST_FILES)}


def _write_dataset(root: Path, per_class: int = 3, seconds: float = 2.0) -> Path:
    """A metadata.csv dataset: per class ``per_class`` files (the last in the val split)."""
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for label, kind in zip(LABELS, ["tone1k", "chirp2to4k"]):
        jan = label == "janbird"
        for i in range(per_class):
            name = f"audio/{label}_{i}.wav"
            sf.write(root / name, synth_signal(kind, seconds, RATE_HZ, rng), RATE_HZ, subtype="PCM_16")
            rows.append({"filename": name, "primary_label": label,
                         "date": f"2015-01-{3 + 4 * i:02d}" if jan else f"2016-07-{2 + 4 * i:02d}",
                         "time": "7.30 am" if jan else "18:00",
                         "latitude": f"{10 + 0.2 * i:.1f}" if jan else f"{-30 - 0.2 * i:.1f}",
                         "longitude": "-66.5" if jan else "W 60", "elevation": "ca. 500 m" if jan else "?",
                         "split": "val" if i == per_class - 1 else "train"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def _perturb(model, layer_name: str, scale: float, seed: int) -> None:
    layer = model.get_layer(layer_name)
    rng = np.random.default_rng(seed)
    layer.set_weights([w + rng.normal(0.0, scale, w.shape).astype(w.dtype) for w in layer.get_weights()])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Exports ``a``, ``b`` (audio only), ``combined`` and ``meta`` (metadata only, untrained), the
    combined run folder, and the test audio with its metadata as CSV and XML folder."""
    from birdnet_tf.data.metadata import METADATA_ENCODER_FILENAME
    from birdnet_tf.export import export_model, export_run, load_run
    from birdnet_tf.models.build import build_model
    from birdnet_tf.models.metadata import make_encoder
    from birdnet_tf.train.trainer import train

    root = tmp_path_factory.mktemp("submit_meta")
    ns = SimpleNamespace(root=root, data=_write_dataset(root / "data"))
    quiet = lambda m: None  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIRDNET_TF_CACHE", str(root / "cache"))
        audio_cfg = Config().replace(TINY_SETTINGS)
        train(audio_cfg, ns.data, root / "audio_run", workers=1, evaluate=False, log=quiet)
        combined_cfg = Config().replace([*TINY_SETTINGS, "metadata.use=combined", "metadata.hidden=8"])
        train(combined_cfg, ns.data, root / "combined_run", workers=1, evaluate=False, log=quiet)
    ns.combined_run = root / "combined_run"
    ns.a = export_run(root / "audio_run", root / "exports" / "a", log=quiet)

    model, cfg, labels, _ = load_run(root / "audio_run")
    assert labels == LABELS
    _perturb(model, "frame_logits", 0.5, seed=1)
    ns.b = export_model(model, cfg, labels, root / "exports" / "b", log=quiet)

    model, cfg, labels, _ = load_run(ns.combined_run)
    layer = model.get_layer("meta_logits")
    layer.set_weights([np.random.default_rng(2).normal(0, 1, w.shape).astype(np.float32) for w in layer.get_weights()])
    ns.combined = export_model(model, cfg, labels, root / "exports" / "combined", log=quiet,
                               metadata_encoder=ns.combined_run / METADATA_ENCODER_FILENAME)

    meta_cfg = Config().replace([*TINY_SETTINGS, "metadata.use=only", "metadata.hidden=8"])
    encoder = root / "meta_encoder.json"
    make_encoder(meta_cfg).fit(pd.read_csv(ns.data / "metadata.csv", dtype=str, keep_default_na=False)).save(encoder)
    ns.meta = export_model(build_model(meta_cfg, len(LABELS)), meta_cfg, LABELS, root / "exports" / "meta",
                           log=quiet, metadata_encoder=encoder)

    ns.audio = root / "test_audio"
    ns.audio.mkdir()
    rng = np.random.default_rng(5)
    for name, (kind, seconds, _) in TEST_FILES.items():
        sf.write(ns.audio / name, synth_signal(kind, seconds, 16000, rng), 16000, subtype="PCM_16")
    ns.csv = root / "test_meta.csv"
    pd.DataFrame([{"MediaId": MEDIA[n], "FileName": n, **m} for n, (_, _, m) in TEST_FILES.items()]) \
        .to_csv(ns.csv, index=False)
    ns.xml = root / "test_xml"
    ns.xml.mkdir()
    for i, (name, (_, _, meta)) in enumerate(TEST_FILES.items()):
        tags = meta if name != "t_odd.wav" else {}  # the last file's XML has no date, time or place
        body = "".join(f"<{k}>{v}</{k}>" for k, v in tags.items())
        (ns.xml / f"{MEDIA[name]}.xml").write_text(
            f"<?xml version='1.0' encoding='UTF-8'?>\n<Audio>\n<MediaId>{MEDIA[name]}</MediaId>\n"
            f"<FileName>{name}</FileName>\n<ClassId>x{i}</ClassId>{body}<Author>someone</Author>\n</Audio>\n",
            encoding="utf-8")
    return ns


def _probs(path: Path) -> dict[tuple[str, str], float]:
    """``{(MediaId, class): probability}`` of a monophone run file (every class listed once per file)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = MONO_LINE.match(line)
        assert m, f"not a monophone line: {line!r}"
        assert (m[1], m[2]) not in out
        out[m[1], m[2]] = float(m[3])
    return out


def _weights_file(path: Path, names: list[str], weights: list[float]) -> Path:
    path.write_text(json.dumps({"models": names, "weights": dict(zip(names, weights)), "method": "greedy"}))
    return path


def _submit(built, models, out: Path, *extra: str) -> tuple[int, str]:
    rc, stdout, stderr = run_cli(["submit", "--task", "monophone", *map(str, models), "--audio", str(built.audio),
                                  "--out", str(out), "--pooling", "mean", "--no-progress", *extra])
    return rc, stdout + stderr


# ------------------------------------------------------------------- weights
def test_weighted_ensemble_is_the_weighted_mean_of_the_members(built, tmp_path):
    runs = {}
    for name, model in [("a", built.a), ("b", built.b)]:
        rc, text = _submit(built, [model], tmp_path / f"{name}.txt")
        assert rc == 0, text
        runs[name] = _probs(tmp_path / f"{name}.txt")
    a, b = runs["a"], runs["b"]
    assert a.keys() == b.keys() and len(a) == len(TEST_FILES) * len(LABELS)
    spread = max(abs(a[k] - b[k]) for k in a)
    assert spread > 0.01, "the two audio models must differ for this test to mean anything"

    # listed names differ from the MODEL paths: weights go by position
    weights = _weights_file(tmp_path / "weights.json", ["runs/x", "runs/y"], [3.0, 1.0])
    rc, text = _submit(built, [built.a, built.b], tmp_path / "ab.txt", "--weights", str(weights))
    assert rc == 0, text
    assert "ensemble weights from" in text and "0.7500 (runs/x)" in text and "0.2500 (runs/y)" in text
    ab = _probs(tmp_path / "ab.txt")
    assert ab.keys() == a.keys()
    for k in a:
        assert ab[k] == pytest.approx(0.75 * a[k] + 0.25 * b[k], abs=2e-6)
    assert max(abs(ab[k] - (a[k] + b[k]) / 2) for k in a) > 0.002  # not the plain mean
    rc, text = _submit(built, [built.b, built.a], tmp_path / "ba.txt", "--weights", str(weights))
    assert rc == 0, text
    ba = _probs(tmp_path / "ba.txt")
    for k in a:
        assert ba[k] == pytest.approx(0.75 * b[k] + 0.25 * a[k], abs=2e-6)

    # weights (1, 0): the first model alone, line for line
    one_zero = _weights_file(tmp_path / "w10.json", ["runs/x", "runs/y"], [1.0, 0.0])
    rc, text = _submit(built, [built.a, built.b], tmp_path / "a_only.txt", "--weights", str(one_zero))
    assert rc == 0, text
    assert (tmp_path / "a_only.txt").read_text() == (tmp_path / "a.txt").read_text()

    # a count mismatch fails before any scoring and writes nothing
    three = _weights_file(tmp_path / "w3.json", ["runs/x", "runs/y", "runs/z"], [1.0, 1.0, 1.0])
    rc, text = _submit(built, [built.a, built.b], tmp_path / "bad.txt", "--weights", str(three))
    assert rc == 2 and "w3.json: has weights for 3 model(s)" in text and "2 MODEL(s) were given" in text
    assert not (tmp_path / "bad.txt").exists()
    rc, text = _submit(built, [built.a, built.b], tmp_path / "bad.txt", "--weights", str(tmp_path / "nope.json"))
    assert rc == 2 and "nope.json: weights file not found" in text


def test_read_submit_weights_checks_values(tmp_path):
    from birdnet_tf.infer.submit import read_submit_weights

    w, listed = read_submit_weights(_weights_file(tmp_path / "w.json", ["p", "q"], [1.0, 3.0]), ["m1", "m2"])
    np.testing.assert_allclose(w, [0.25, 0.75])
    assert listed == ["p", "q"]
    with pytest.raises(BirdnetError, match="all zero"):
        read_submit_weights(_weights_file(tmp_path / "z.json", ["p", "q"], [0.0, 0.0]), ["m1", "m2"])
    with pytest.raises(BirdnetError, match="non-negative"):
        read_submit_weights(_weights_file(tmp_path / "n.json", ["p", "q"], [1.0, -1.0]), ["m1", "m2"])
    (tmp_path / "gap.json").write_text(json.dumps({"models": ["p", "q"], "weights": {"p": 1.0}}))
    with pytest.raises(BirdnetError, match="no weight for the listed model 'q'"):
        read_submit_weights(tmp_path / "gap.json", ["m1", "m2"])


# ------------------------------------------------------------------ metadata
def test_recording_metadata_from_xml_and_csv_matched_like_media_ids(built, tmp_path):
    from birdnet_tf.infer.submit import match_recording_metadata, read_recording_metadata

    xml = read_recording_metadata(built.xml)
    assert list(xml.columns) == ["file", "date", "time", "latitude", "longitude", "elevation"]
    assert xml.set_index("file").loc["t_jan.wav", "elevation"] == "ca. 500 m"
    assert xml.set_index("file").loc["t_odd.wav"].isna().all()
    csv = read_recording_metadata(built.csv)
    assert csv.set_index("file").loc["t_jul.wav", "longitude"] == "W 60"
    files = [str(tmp_path / "elsewhere" / "t_jan.wav"), "t_jul.flac", "unknown.wav"]  # by name, by stem, none
    rows, matched = match_recording_metadata(files, csv)
    assert list(matched) == [True, True, False]
    assert rows.loc[0, "date"] == "2019-01-12" and rows.loc[1, "time"] == "18:00" and rows.iloc[2].isna().all()

    clash = tmp_path / "clash.csv"
    pd.DataFrame({"MediaId": ["1", "1"], "filename": ["a/x.wav", "b/x.wav"], "date": ["2019-01-01", "2019-02-01"]}) \
        .to_csv(clash, index=False)
    with pytest.raises(BirdnetError, match="'x.wav' has two metadata entries"):
        match_recording_metadata(["x.wav"], read_recording_metadata(clash), clash)
    no_file = tmp_path / "no_file.csv"
    pd.DataFrame({"MediaId": ["1"], "date": ["2019-01-01"]}).to_csv(no_file, index=False)
    with pytest.raises(BirdnetError, match="no_file.csv: needs a file name column"):
        read_recording_metadata(no_file)


def _predict_probs(built, export, tmp_path, name: str, *extra: str) -> dict[tuple[str, str], float]:
    out = tmp_path / f"{name}.csv"
    rc, stdout, stderr = run_cli(["predict", str(export), str(built.audio), "--pooling", "mean", "--out", str(out),
                                  "--no-progress", *extra])
    assert rc == 0, stdout + stderr
    table = pd.read_csv(out)
    return {(MEDIA[Path(f).name], label): float(p) for f, row in zip(table["file"], table[LABELS].to_numpy())
            for label, p in zip(LABELS, row)}


@pytest.mark.parametrize("engine", ["whole", "sliding"])
def test_combined_member_gets_each_files_metadata_like_predict(built, tmp_path, engine):
    rc, text = _submit(built, [built.combined], tmp_path / "csv.txt", "--metadata", str(built.csv),
                       "--engine", engine)
    assert rc == 0, text
    assert "have no date, time or place" not in text and "one by one" not in text
    with_csv = _probs(tmp_path / "csv.txt")
    expected = _predict_probs(built, built.combined, tmp_path, "pred", "--metadata", str(built.csv),
                              "--engine", engine)
    assert with_csv.keys() == expected.keys()
    for k in expected:  # labels are the ClassIds here (no class ids in the run): k = (MediaId, label)
        assert with_csv[k] == pytest.approx(expected[k], abs=2e-6)

    # without --metadata: MediaIds from stems, every file's metadata unknown, one warning
    rc, text = _submit(built, [built.combined], tmp_path / "none.txt", "--engine", engine)
    assert rc == 0, text
    assert sum("no --metadata was given: all 3 file(s)" in line for line in text.splitlines()) == 1
    without = {(MEDIA[f"{media}.wav"], c): p for (media, c), p in _probs(tmp_path / "none.txt").items()}
    assert max(abs(without[k] - with_csv[k]) for k in with_csv) > 0.01  # the metadata matters
    unknown = _predict_probs(built, built.combined, tmp_path, "pred_none", "--engine", engine)
    for k in unknown:
        assert without[k] == pytest.approx(unknown[k], abs=2e-6)

    # the XML folder: the same values, except one file whose XML has no date, time or place
    rc, text = _submit(built, [built.combined], tmp_path / "xml.txt", "--metadata", str(built.xml),
                       "--engine", engine)
    assert rc == 0, text
    warnings = [line for line in text.splitlines() if "have no date, time or place" in line]
    assert len(warnings) == 1 and "1 of 3 file(s)" in warnings[0]
    with_xml = _probs(tmp_path / "xml.txt")
    odd = MEDIA["t_odd.wav"]
    for k in with_csv:
        assert with_xml[k] == pytest.approx(without[k] if k[0] == odd else with_csv[k], abs=2e-6)


def test_metadata_only_member_in_an_ensemble(built, tmp_path):
    """A metadata-only member: one score row per file from its metadata, windows from the recording."""
    meta_only = _predict_probs(built, built.meta, tmp_path, "pred_meta", "--metadata", str(built.csv))
    audio = _predict_probs(built, built.a, tmp_path, "pred_a")
    assert len({round(meta_only[MEDIA[n], LABELS[0]], 4) for n in TEST_FILES}) > 1  # files differ by metadata
    rc, text = _submit(built, [built.a, built.meta], tmp_path / "am.txt", "--metadata", str(built.csv))
    assert rc == 0, text
    assert "metadata-only model" in text and "whole-recording signatures" not in text
    got = _probs(tmp_path / "am.txt")
    for k in audio:
        assert got[k] == pytest.approx((audio[k] + meta_only[k]) / 2, abs=2e-6)

    # alone (no audio member), the windows still come from the recording's length
    from birdnet_tf.infer.submit import load_members, member_metadata, score_file

    members, _ = load_members([built.meta], log=lambda m: None)
    files = [str(built.audio / "t_jan.wav")]
    feats = member_metadata(members, files, built.csv, log=lambda m: None)
    res = score_file(members, files[0], "monophone", 2.0, 2.0, None, metadata=[feats[0][0]])
    assert res["n_samples"] == int(4.5 * RATE_HZ) and len(res["scores"]) == 3
    np.testing.assert_allclose(res["scores"], np.repeat(res["scores"][:1], 3, axis=0))
    np.testing.assert_allclose(res["scores"][0], [meta_only[MEDIA["t_jan.wav"], c] for c in LABELS], atol=2e-6)


# -------------------------------------------------------------------- tflite
def test_tflite_refuses_a_metadata_run(built, tmp_path):
    out = tmp_path / "tflite"
    rc, stdout, stderr = run_cli(["tflite", str(built.combined_run), "--out", str(out)])
    assert rc == 2
    assert (f"birdnet-tf: error: {built.combined_run}: TFLite conversion supports audio-only models; this run uses "
            "metadata (metadata.use=combined)") in stderr
    assert "verifying" not in stdout and not out.exists()

    from birdnet_tf.export import load_run
    from birdnet_tf.tflite import convert, export_tflite

    with pytest.raises(BirdnetError, match=r"audio-only models; this run uses metadata \(metadata.use=combined\)"):
        export_tflite(built.combined_run, out, ["float32"], log=lambda m: None)
    model, *_ = load_run(built.combined_run)
    with pytest.raises(BirdnetError, match=r"this model uses metadata \(metadata.use=combined\)"):
        convert(model, "float32", window_samples=2 * RATE_HZ)


# --------------------------------------------------------------------- serve
def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_serve_combined_export_with_both_inputs_equals_local(built, tmp_path):
    from birdnet_tf.export import ExportedModel
    from birdnet_tf.infer.predict import file_metadata, read_metadata_csv
    from birdnet_tf.serve import ServerThread, make_app

    base = tmp_path / "combo"
    shutil.copytree(built.combined, base / "1")
    local = ExportedModel(built.combined)
    names = list(TEST_FILES)
    meta = file_metadata(local, names, read_metadata_csv(built.csv), log=lambda m: None)[:2]
    waves = (0.2 * np.random.default_rng(7).standard_normal((2, 2 * RATE_HZ))).astype(np.float32)
    expected = local(waves, meta)
    assert not np.allclose(expected, local(waves), atol=1e-3)  # the metadata input matters

    server = ServerThread(make_app(base, workers=1, log=lambda line: None))
    try:
        url = f"{server.url}/v1/models/combo:predict"
        columnar = _post(url, {"inputs": {"waveform": waves.tolist(), "metadata": meta.tolist()}})
        np.testing.assert_allclose(np.asarray(columnar["outputs"]), expected, atol=1e-5)
        rows = _post(url, {"instances": [{"waveform": w.tolist(), "metadata": m.tolist()}
                                         for w, m in zip(waves, meta)]})
        np.testing.assert_allclose(np.asarray(rows["predictions"]), expected, atol=1e-5)
        request = urllib.request.Request(url, data=json.dumps({"inputs": {"waveform": waves.tolist()}}).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=120)
        assert caught.value.code == 400 and "input 'metadata' missing" in json.loads(caught.value.read())["error"]
    finally:
        server.stop()

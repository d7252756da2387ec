"""Feature distillation (issue 11): a teacher's per-window embeddings (an embedding table) as the
target of an auxiliary head that trains beside the soft-target loss and is not in the export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

tf = pytest.importorskip("tensorflow")

from conftest import SYNTH_CLASSES, tiny_cfg, write_synthetic_dataset  # noqa: E402

from birdnet_tf.distill.features import (  # noqa: E402
    EmbeddingTable,
    FeatureTargets,
    fit_pca,
    read_embedding_table,
    write_embedding_table,
)
from birdnet_tf.errors import BirdnetError, ConfigError  # noqa: E402


def windows_of(files, seconds, hop_s=1.0):
    """``(row_file, start_s, end_s)`` of consecutive ``hop_s`` windows of each file."""
    rows = [(f, k * hop_s, min(k * hop_s + hop_s, s)) for f, s in zip(files, seconds)
            for k in range(int(np.ceil(s / hop_s)))]
    return [np.array(v) for v in zip(*rows)]


def test_embedding_table_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(BirdnetError, match=r"nowhere\.npz: embedding table does not exist"):
        read_embedding_table(tmp_path / "nowhere.npz")
    np.savez(tmp_path / "other.npz", row_file=np.array(["a.wav"]), vectors=np.zeros((1, 4)))
    with pytest.raises(BirdnetError, match=r"other\.npz: not an embedding table \(lacks start_s, end_s\)"):
        read_embedding_table(tmp_path / "other.npz")
    f, s, e = windows_of(["a.wav", "b.wav"], [2.0, 2.0])
    write_embedding_table(tmp_path / "emb.npz", f, s, e, np.ones((len(f), 6)))
    table = read_embedding_table(tmp_path / "emb.npz")
    assert table.files == ["a.wav", "b.wav"] and table.dims == 6 and table.vectors.dtype == np.float32
    with pytest.raises(BirdnetError, match=r"emb\.npz: embedding vectors have 6 dimensions, expected 1024"):
        FeatureTargets(table, ["x/a.wav"], ["a.wav"], expect_dims=1024, log=lambda m: None)
    with pytest.raises(BirdnetError, match=r"emb\.npz: holds no window of any of the 1 training files"):
        FeatureTargets(table, ["x/c.wav"], ["c.wav"], log=lambda m: None)


def test_targets_pool_projected_windows_and_pca_sees_training_files_only():
    rng = np.random.default_rng(0)
    f, s, e = windows_of(["a.wav", "b.wav", "val.wav"], [3.0, 2.0, 2.0])
    vectors = rng.standard_normal((len(f), 5)).astype(np.float32)
    vectors[f == "val.wav"] += 100.0  # a validation file's windows would move the PCA mean
    files, fi = np.unique(f, return_inverse=True)
    table = EmbeddingTable(list(files), fi.astype(np.int64), s, e, vectors, "emb.npz")
    logs = []
    ft = FeatureTargets(table, ["sp/a.wav", "sp/b.wav", "sp/missing.wav"], ["a.wav", "b.wav", "missing.wav"],
                        dims=3, log=logs.append)
    train = vectors[f != "val.wav"]
    mean, comps = fit_pca(train, 3)
    np.testing.assert_allclose(ft.mean, train.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(np.abs(ft.components), np.abs(comps), atol=1e-5)
    assert ft.dims == 3 and ft.unmatched == 1 and "missing.wav" in logs[0]
    # excerpt 0.5..2.0 s of a.wav: window 0 (0.5 s) and window 1 (1 s)
    got = ft.pool(0, 0.5, 2.0).numpy()
    proj = (vectors[:2] - ft.mean) @ ft.components
    np.testing.assert_allclose(got[:, 0], (0.5 * proj[0] + 1.0 * proj[1]) / 1.5, atol=1e-5)
    np.testing.assert_array_equal(got[:, 1], 1.0)
    np.testing.assert_array_equal(ft.pool(2, 0.0, 1.0).numpy()[:, 1], 0.0)  # missing.wav: unknown


def test_feature_settings_are_checked_before_anything_is_written(tmp_path):
    from birdnet_tf.distill.setup import check_distill_config

    with pytest.raises(BirdnetError, match=r"none\.npz: distill.features embedding table does not exist"):
        check_distill_config(tiny_cfg(f"distill.features={tmp_path / 'none.npz'}"))
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(ConfigError, match="distill.feature_weight must be >= 0"):
        check_distill_config(tiny_cfg(f"distill.features={tmp_path / 'e.npz'}", "distill.feature_weight=-1"))


def test_auxiliary_head_learns_the_teacher_embedding_and_is_not_exported(tmp_path):
    from birdnet_tf.export import ExportedModel, export_run
    from birdnet_tf.models.build import load_keras_model
    from birdnet_tf.train import trainer

    data = write_synthetic_dataset(tmp_path / "synth", files_per_class=3)
    # the "teacher embedding" of a window: its class's direction in 32-d, plus a little noise
    rng = np.random.default_rng(1)
    direction = {k: rng.standard_normal(32) for k in SYNTH_CLASSES}
    rows, vecs = [], []
    for wav in sorted(data.rglob("*.wav")):
        seconds = sf.info(wav).duration
        f, s, e = windows_of([wav.relative_to(data).as_posix()], [seconds])
        rows += list(zip(f, s, e))
        vecs += [direction[wav.parent.name] + 0.2 * rng.standard_normal(32) for _ in f]
    f, s, e = (np.array(v) for v in zip(*rows))
    write_embedding_table(tmp_path / "emb.npz", f, s, e, np.array(vecs))
    cfg = tiny_cfg("train.epochs=3", "train.steps_per_epoch=6", "train.learning_rate=0.003",
                   "augment.mixup_prob=0", f"distill.features={tmp_path / 'emb.npz'}", "distill.feature_dims=8",
                   "distill.feature_weight=5")
    run = tmp_path / "run"
    logs = []
    trainer.train(cfg, data, run, workers=1, evaluate=False, log=logs.append)
    assert any("feature distillation" in str(m) and "8 principal components" in str(m) for m in logs)
    with open(run / "history.csv") as fh:
        cosine = [float(r["feature_cosine"]) for r in csv.DictReader(fh)]
    assert len(cosine) == 3 and cosine[-1] > cosine[0] + 0.15 and cosine[-1] > 0.3, cosine
    saved = json.loads((run / "config.json").read_text())["distill"]
    assert saved["features"] == str((tmp_path / "emb.npz").resolve())
    # the student alone is saved and exported: no auxiliary head, the plain scores signature
    best = load_keras_model(run / "best.keras")
    assert all("feature" not in layer.name for layer in best.layers)
    assert best.output.shape[-1] == len(SYNTH_CLASSES)
    export_run(run, tmp_path / "export", log=lambda m: None)
    exported = ExportedModel(tmp_path / "export")
    outputs = exported.signature("serving_default").structured_outputs
    assert "scores" in outputs and not any("feature" in k for k in outputs)
    assert exported(np.zeros((1, 32000), np.float32)).shape == (1, len(SYNTH_CLASSES))
    assert not Path(tmp_path / "export").joinpath("feature_head").exists()

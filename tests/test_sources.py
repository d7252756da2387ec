"""The example sources (birdnet_tf.train.sources): one per input kind, for training and evaluation.

Each test runs one source through what ``train`` and ``evaluate`` ask of it, without fitting:
the run files of a new run, a real training batch of the right shapes, the validation windows,
the model that reads them, and the same files read back from the run folder for evaluation.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from conftest import TINY_SETTINGS, run_cli, write_synthetic_dataset  # noqa: E402

from birdnet_tf.config import Config, load_config  # noqa: E402
from birdnet_tf.errors import ConfigError  # noqa: E402
from birdnet_tf.runs import InputKind, RunPaths, open_run  # noqa: E402
from birdnet_tf.train.sources import (  # noqa: E402
    ChunkSource, MetadataSource, WaveformSource, example_source, run_source)


def first_batch(dataset):
    x, y = next(iter(dataset))
    return x, y.numpy()


def new_run(source, tmp_path):
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    files = source.run_files(paths, resume=False, state={})
    source.add_features(paths, files)
    return paths, files


def test_waveform_source_trains_on_excerpts_and_evaluates_from_the_run(tmp_path):
    data = write_synthetic_dataset(tmp_path / "synth", files_per_class=2)
    cfg = Config().replace([*TINY_SETTINGS, "data.val_fraction=0.5"])
    source = example_source(cfg, data, workers=1, log=lambda m: None)
    assert type(source) is WaveformSource and source.kind is InputKind.WAVEFORM and source.takes_teachers
    paths, files = new_run(source, tmp_path)
    assert paths.split.is_file() and paths.labels.is_file() and list(files.labels) == sorted(files.labels)
    examples = source.training(files)
    x, y = first_batch(examples.dataset)
    assert x.shape == (4, int(2.0 * cfg.audio.sample_rate_hz)) and y.shape == (4, 3)
    assert np.allclose(y.sum(axis=1), 1.0)  # cce (the default) trains on rows summing to 1
    assert examples.what == f"{len(files.train)} files" and examples.steps >= 1
    assert sorted(set(examples.windows.file_index)) == list(range(len(files.val)))
    model = source.build_model(len(files.labels))
    assert model.inputs[0].name.split(":")[0] == "waveform" and source.fit_model(model) is model

    run = open_run(paths.root)
    again = run_source(run, log=lambda m: None)
    assert type(again) is WaveformSource
    rows, windows = again.evaluation(run, "val")
    assert sorted(rows["key"]) == sorted(files.val["key"])
    assert all(isinstance(v, list) for v in rows["secondary_labels"])
    assert windows.file_index.max() == len(rows) - 1


def test_metadata_source_reads_no_audio_and_evaluates_without_the_dataset(tmp_path):
    from test_metadata_model import LABELS, write_meta_dataset

    data = write_meta_dataset(tmp_path / "data", per_class=3, val_per_class=1)
    cfg = Config().replace([*TINY_SETTINGS, "metadata.use=only", "metadata.hidden=8"])
    source = example_source(cfg, data, workers=1, log=lambda m: None)
    assert type(source) is MetadataSource and not source.takes_teachers
    with pytest.raises(ConfigError, match="distill.teachers need a waveform model"):
        example_source(cfg.replace([f"distill.teachers={tmp_path}"]), data, log=lambda m: None).check()
    paths, files = new_run(source, tmp_path)
    n_features = files.train_meta.shape[1]
    examples = source.training(files)
    x, y = first_batch(examples.dataset)
    assert set(x) == {"metadata"} and x["metadata"].shape[1:] == (n_features,) and y.shape[1] == len(LABELS)
    assert examples.what == f"4 files with {n_features} metadata features"
    assert list(examples.windows.file_index) == [0, 1]  # one "window" per validation file
    assert source.build_model(len(LABELS)).inputs[0].name.split(":")[0] == "metadata"

    shutil.rmtree(data)  # split.csv carries the raw metadata: evaluation needs no dataset
    run = open_run(paths.root)
    rows, windows = run_source(run, log=lambda m: None).evaluation(run, "val")
    assert len(rows) == 2 and list(windows.file_index) == [0, 1]
    got = np.concatenate([b["metadata"].numpy() for b in windows.dataset])
    assert np.allclose(got, files.val_meta)  # the same features as at training time


def test_chunk_source_trains_on_png_chunks_and_refuses_what_it_cannot(tmp_path):
    data = write_synthetic_dataset(tmp_path / "synth", files_per_class=2)
    chunks = tmp_path / "chunks"
    sizes = ["chunks.width=64", "chunks.height=32"]
    rc, out, err = run_cli(["extract", str(data), "--out", str(chunks), "--config", "pipelines/kahl2018_baseline.yaml",
                            *[a for s in sizes for a in ("--set", s)], "--workers", "1", "--no-progress"])
    assert rc == 0, err + out
    cfg = load_config("pipelines/kahl2018_baseline.yaml", [
        *sizes, "model.filters=4,8,8,8", "model.resnet_k=1", "model.resnet_n=1", "data.batch_size=4",
        "data.max_eval_windows=3", "data.val_fraction=0.5"])
    source = example_source(cfg, chunks, log=lambda m: None)
    assert type(source) is ChunkSource and len(source.index) > 0
    with pytest.raises(ConfigError, match="needs a dataset of recordings, not a folder of PNG chunks"):
        source.check(val_keys=["tone1k/tone1k_0.wav"])
    with pytest.raises(ConfigError, match="metadata.use=combined needs a dataset of recordings"):
        example_source(cfg.replace(["metadata.use=combined"]), chunks, log=lambda m: None).check()
    paths, files = new_run(source, tmp_path)
    assert open_run(paths.root).kind is InputKind.CHUNKS  # config.json records input: chunks
    examples = source.training(files)
    x, y = first_batch(examples.dataset)
    assert x.shape[1:] == (64, 32) and y.shape[1] == 3 and float(tf.reduce_max(x)) <= 1.0
    assert examples.what.endswith(f"chunks of {len(files.train)} files")
    assert source.build_model(3).inputs[0].name.split(":")[0] == "image"

    run = open_run(paths.root)
    rows, windows = run_source(run, log=lambda m: None).evaluation(run, "val")
    assert set(rows["key"]) <= set(files.val["key"]) and windows.file_index.max() == len(rows) - 1

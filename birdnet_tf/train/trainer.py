"""Training: a resumable run of a config on a data folder, with file-level validation and checkpoints.

:func:`train` puts the parts together:

- :mod:`birdnet_tf.runs` — the run folder's files and readers (what each file holds is listed there);
- :mod:`birdnet_tf.train.sources` — the example source of the input kind (recordings, PNG chunks,
  metadata): labels, file split, training examples, validation windows, the model that reads them;
- :mod:`birdnet_tf.train.optim` — optimizer, learning-rate schedule and loss of ``train.*``;
- :mod:`birdnet_tf.train.callbacks` — validation, checkpoints, the plateau schedule, early stopping;
- :mod:`birdnet_tf.train.loop` — dtype policy, the distribution-strategy scope, the model built or
  restored, ``fit``; :mod:`birdnet_tf.train.custom_loop` — the loop of ``train.strategy=multi_worker``.

Running ``train`` again on the same folder with the same config resumes after the
last finished epoch; with a different config it refuses instead of mixing runs.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

from birdnet_tf.config import Config, read_config_json
from birdnet_tf.errors import BirdnetError, ConfigError
from birdnet_tf.fileio import remove_stale_parts
from birdnet_tf.runs import RunPaths, read_state


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb and not (isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)) and list(va) == list(vb)):
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def check_run_folder(paths: RunPaths, cfg: Config) -> bool:
    """True when ``paths`` holds an earlier run of ``cfg`` to resume; raises if it holds something else."""
    if not paths.root.exists():
        return False
    if not paths.root.is_dir():
        raise BirdnetError(f"{paths.root}: exists and is not a folder")
    if not paths.config.exists():
        if any(paths.root.iterdir()):
            raise BirdnetError(
                f"{paths.root}: folder is not empty and holds no birdnet-tf run (no config.json); "
                "refusing to write into it — choose a new --out")
        return False
    old, _ = read_config_json(paths.config)
    diffs = _diff(old.to_dict(), cfg.to_dict())
    if diffs:
        raise ConfigError(
            f"{paths.root}: holds a run with a different config ({'; '.join(diffs[:6])}"
            f"{' …' if len(diffs) > 6 else ''}); choose a new --out to start another run")
    return True


def run_to_resume(paths: RunPaths, cfg: Config, dist) -> bool:
    """:func:`check_run_folder` on the chief. Another worker of a multi-worker run resumes only when
    the chief has finished an epoch there (``state.json``): at the start of a new run it could see
    the chief's first files half written, and before the first epoch ends nothing is lost by
    starting anew."""
    if dist.chief or paths.state.exists():
        return check_run_folder(paths, cfg)
    return False


def check_input_length(cfg: Config) -> None:
    """Refuses an excerpt shorter than the model's receptive field, before anything is written."""
    from birdnet_tf.models.build import build_model, min_samples

    if cfg.metadata.use == "only":  # the metadata MLP reads no audio
        return
    need = min_samples(build_model(cfg, 1), cfg)
    if cfg.excerpt_samples < need:
        raise ConfigError(f"data.excerpt_s={cfg.data.excerpt_s} is shorter than the {cfg.model.name} model's "
                          f"receptive field ({need / cfg.audio.sample_rate_hz:.2f} s with these frontend "
                          "settings); raise data.excerpt_s")


def check_config(cfg: Config) -> None:
    """Refuses what no data can fix (metadata settings, an excerpt shorter than the receptive field,
    an unknown loss) before anything is written."""
    from birdnet_tf.models.metadata import check_metadata_config
    from birdnet_tf.train.optim import make_loss

    check_metadata_config(cfg)
    check_input_length(cfg)
    make_loss(cfg)


def train(cfg: Config, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
          cache_dir: str | os.PathLike | None = None, workers: int = 2, evaluate: bool = True,
          log=print, val_keys=None) -> dict:
    """Trains a model on a dataset folder into a run folder; resumes an interrupted run.

    Args:
        cfg: The run's config.
        data_dir: A dataset folder (raw or prepared; see :mod:`birdnet_tf.data.dataset`), or a
            ``birdnet-tf extract`` folder of PNG chunks (``frontend.kind=chunks`` recipes): the model
            then takes the chunk images (:class:`~birdnet_tf.train.sources.ChunkSource`).
        out_dir: The run folder (created; resumed if it holds the same config).
        cache_dir: Where raw audio is prepared (default: a per-dataset cache folder).
        workers: Processes for decoding audio.
        evaluate: Write the evaluation report of the best model at the end.
        val_keys: A fixed validation set (catalog keys; ``birdnet-tf tune``'s recordist folds)
            instead of ``data.split_by``; the other files train. Recordings only, not chunk folders.

    Returns:
        A summary dict: run folder, best epoch and score, epochs run, wall time.
    """
    from birdnet_tf.distill.setup import check_distill_config, resolve_paths
    from birdnet_tf.train import distribute
    from birdnet_tf.train.sources import example_source

    dist = distribute.resolve(cfg, log)  # before any other TensorFlow work (multi-worker collectives)
    t0, paths, data_dir = time.time(), RunPaths(Path(out_dir)), Path(data_dir)
    if not data_dir.is_dir():
        raise BirdnetError(f"{data_dir}: dataset folder does not exist")
    cfg = resolve_paths(cfg)  # teachers recorded with absolute paths; a resume must name the same
    check_distill_config(cfg)
    resume = run_to_resume(paths, cfg, dist)
    check_config(cfg)
    source = example_source(cfg, data_dir, workers=workers, log=log)  # one per input kind
    source.check(val_keys)
    if cfg.train.init_weights and not resume and not Path(cfg.train.init_weights).is_file():
        raise BirdnetError(f"{cfg.train.init_weights}: train.init_weights file does not exist")
    state = read_state(paths.state) if resume else {}
    if resume and (state.get("epoch", 0) >= cfg.train.epochs or state.get("stopped_early")):
        log(f"{paths.root}: training already finished (epoch {state.get('epoch')}, "
            f"best {state.get('monitor')} {state.get('best'):.4f} at epoch {state.get('best_epoch')})")
        return summary(paths, state, t0, epochs_run=0)

    # only the chief writes the run folder; another worker writes its files (a new run's split,
    # its checkpoints) to a temporary folder deleted at the end, and reads a resumed run's from the chief's
    scratch = None if dist.chief else Path(tempfile.mkdtemp(prefix=f"birdnet-tf-worker{dist.worker_index}-"))
    try:
        return fit_run(cfg, dist, paths, RunPaths(scratch) if scratch else paths, source, resume, state, t0,
                       cache_dir, evaluate, log, val_keys)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def fit_run(cfg: Config, dist, paths: RunPaths, write_paths: RunPaths, source, resume: bool, state: dict,
            t0: float, cache_dir, evaluate: bool, log, val_keys) -> dict:
    """The part of :func:`train` after the checks: run files, examples, model, ``fit``, evaluation.

    ``write_paths`` is where this process writes: ``paths`` on the chief, a temporary folder on
    another worker of a multi-worker run (a new run's files, its checkpoints).
    """
    import keras

    from birdnet_tf.data.labels import background_matrix, encode_targets, primary_indices
    from birdnet_tf.data.split import describe_split
    from birdnet_tf.train import callbacks, custom_loop, loop
    from birdnet_tf.train.sources import describe_model

    write_paths.root.mkdir(parents=True, exist_ok=True)
    run_paths = paths if resume else write_paths  # the run's files: written when new, read on resume
    files = source.run_files(run_paths, resume, state, cache_dir, val_keys)
    log(describe_split(files.train, files.val))
    source.add_features(run_paths, files)
    policy = loop.configure_precision(cfg, log)
    # seeds initial weights, excerpt positions and augmentation (parallel tf.data and
    # multi-threaded kernels still make runs differ slightly); other workers draw other excerpts
    keras.utils.set_random_seed(cfg.data.seed + int(state.get("epoch", 0)) + 7919 * dist.worker_index)
    # data.batch_size is per replica: steps of all files at the global batch (the same on every worker)
    global_cfg = cfg.replace([f"data.batch_size={cfg.data.batch_size * dist.replicas}"])
    steps = cfg.train.steps_per_epoch or global_steps(files.train, global_cfg)
    if dist.kind == "multi_worker":  # each worker reads its share of the files (custom_loop)
        examples, dataset = custom_loop.distributed_dataset(source, files, cfg, dist)
        examples = dataclasses.replace(examples, steps=steps, dataset=dataset)
    elif dist.replicas > 1:  # fit splits each global batch among the local replicas
        source.cfg = global_cfg
        examples = dataclasses.replace(source.training(files), steps=steps)
        source.cfg = cfg
    else:
        examples = source.training(files)
    val = examples.val
    val_targets = encode_targets(val, files.labels, cfg.data.background_weight)
    with loop.strategy_scope(cfg):
        model, fit_model, resumed = loop.prepare_model(cfg, paths, source, len(files.labels), examples.steps,
                                                       resume, files.init_weights, log)
    initial_epoch = int(state.get("epoch", 0)) if resumed else 0
    state = state if resumed else {}
    source.set_noise_bank(model, files)
    if dist.chief:
        callbacks.trim_history(paths.history, initial_epoch)
        remove_stale_parts(paths.root, paths.checkpoints)  # temporary files of a killed save
    run_callbacks = callbacks.make_callbacks(cfg, write_paths, examples.windows, primary_indices(val, files.labels),
                                             background_matrix(val, files.labels), val_targets, examples.steps,
                                             state, log, chief=dist.chief)
    log(f"training {describe_model(cfg)} ({model.count_params():,} parameters, {policy}, {dist.describe()}) "
        f"on {examples.what}, "
        f"validating on {len(val)} files; {examples.steps} steps/epoch, epochs {initial_epoch + 1}..{cfg.train.epochs}")
    if dist.kind == "multi_worker":  # Keras' fit cannot (keras-team/keras#20585)
        custom_loop.fit(fit_model, examples.dataset, cfg, examples.steps, initial_epoch, run_callbacks, dist, log)
    else:
        loop.fit(fit_model, examples.dataset, cfg, examples.steps, initial_epoch, run_callbacks)
    state = read_state(paths.state) or state if dist.chief else state
    result = summary(paths, state, t0, epochs_run=int(state.get("epoch", 0)) - initial_epoch)
    if evaluate and dist.chief and paths.best.exists():
        from birdnet_tf.evaluate.run import evaluate_run

        result["report"] = str(evaluate_run(paths.root, log=log)["report_dir"])
    return result


def global_steps(rows, cfg: Config) -> int:
    """Optimizer steps per epoch of all training files at ``cfg``'s (global) batch: the same on every worker."""
    import math

    from birdnet_tf.data import pipeline

    if "duration_s" in rows.columns:
        return pipeline.steps_in_epoch(rows["duration_s"].to_numpy(float), cfg)
    return max(1, math.ceil(len(rows) / cfg.data.batch_size))


def summary(paths: RunPaths, state: dict, t0: float, epochs_run: int) -> dict:
    """The dict :func:`train` returns (and ``birdnet-tf train`` prints)."""
    return {"run_dir": str(paths.root), "best_model": str(paths.best), "best_epoch": state.get("best_epoch"),
            "monitor": state.get("monitor"), "best": state.get("best"), "epochs": state.get("epoch"),
            "best_time_s": state.get("best_time_s"), "epochs_run": epochs_run,
            "wall_s": round(time.time() - t0, 1)}

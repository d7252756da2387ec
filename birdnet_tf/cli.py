"""The ``birdnet-tf`` command: a thin layer over the library functions.

TensorFlow is imported lazily inside the subcommands, so ``--help`` is instant.
Errors a user can act on (:class:`~birdnet_tf.errors.BirdnetError`) are printed as
one line, ``birdnet-tf: error: ...``, with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from birdnet_tf import __version__
from birdnet_tf.errors import BirdnetError, about

class LibraryDefault:
    """The default of an option whose value the library owns: parameter ``name`` of the function
    (or dataclass field) ``target`` = ``"package.module.attribute"``.

    ``--help`` shows the library's value (``%(default)s``; the module is imported only then), and
    an option left out is not passed on (:func:`given`), so the library's own default applies:
    the CLI never repeats a default that could drift.
    """

    def __init__(self, target: str, name: str):
        self.target, self.name = target, name

    def value(self):
        import dataclasses
        import importlib
        import inspect

        module, attribute = self.target.rsplit(".", 1)
        obj = getattr(importlib.import_module(module), attribute)
        if dataclasses.is_dataclass(obj):
            return next(f.default for f in dataclasses.fields(obj) if f.name == self.name)
        return inspect.signature(obj).parameters[self.name].default

    def __str__(self) -> str:
        value = self.value()
        return " ".join(value) if isinstance(value, (list, tuple)) else str(value)


def given(args, *names: str, **renamed: str) -> dict:
    """Keyword arguments of the options the user gave: ``names`` (parameter = option dest) and
    ``renamed`` (parameter=dest); options left at a :class:`LibraryDefault` are left out."""
    pairs = [(n, n) for n in names] + list(renamed.items())
    return {param: getattr(args, dest) for param, dest in pairs
            if not isinstance(getattr(args, dest), LibraryDefault)}

#: Top-level modules of the ``train`` extra: a command that needs one fails with an install hint without it.
TRAIN_MODULES = {"tensorflow", "keras", "matplotlib", "tensorboard", "cv2", "aiohttp", "tensorflow_serving",
                 "keras_tuner", "google"}


def _quiet_tensorflow() -> None:
    """Imports TensorFlow without its CPU-only start-up chatter (real errors still show)."""
    from birdnet_tf.fileio import quiet_tensorflow

    quiet_tensorflow()


def _log(msg: str) -> None:
    print(msg, flush=True)


def _config(args):
    from birdnet_tf.config import load_config

    return load_config(args.config, args.set)


def cmd_prepare(args) -> int:
    from birdnet_tf.data.dataset import prepare_dataset

    cfg = _config(args)
    df = prepare_dataset(args.data, args.out, cfg.audio.sample_rate_hz, workers=args.workers,
                         progress=not args.no_progress, log=_log)
    _log(f"prepared dataset: {args.out} ({len(df)} recordings, metadata.csv written); "
         f"train on it with: birdnet-tf train --data {args.out} --out RUN_DIR")
    return 1 if df.attrs.get("failed") and args.strict else 0


def cmd_sort(args) -> int:
    from birdnet_tf.data.sort import read_class_list, sort_dataset

    options = {name: value for name, value in given(args, "mode", "val_fraction", "seed", "max_classes", "min_files",
                                                    "max_files", "oversample_to").items() if value is not None}
    if args.classes is not None:
        options["classes"] = read_class_list(args.classes)
    result = sort_dataset(args.source, args.out, progress=not args.no_progress, log=_log, **options)
    _log(result.summary())
    _log(f"next: birdnet-tf extract {args.out} --out CHUNKS_DIR  (spectrogram chunks, as the 2018 baseline)\n"
         f"  or: birdnet-tf train --data {args.out} --out RUN_DIR  (metadata.csv has the train/val split; "
         f"labels.csv maps labels to class ids)")
    return 0


def cmd_extract(args) -> int:
    from birdnet_tf.data.extract import extract

    cfg = _config(args)
    result = extract(args.source, args.out, cfg.chunks, workers=args.workers, progress=not args.no_progress,
                     log=_log, **given(args, "seed"))
    return 1 if result.failed and args.strict else 0


def cmd_train(args) -> int:
    _quiet_tensorflow()
    from birdnet_tf.train.trainer import train

    from birdnet_tf.distill.setup import with_teachers

    cfg = with_teachers(_config(args), args.teacher)
    if args.strategy:
        cfg = cfg.replace([f"train.strategy={args.strategy}"])
    summary = train(cfg, args.data, args.out, cache_dir=args.cache, workers=args.workers,
                    evaluate=not args.no_eval, log=_log)
    _log(f"best model: {summary['best_model']} (epoch {summary['best_epoch']}, "
         f"{summary['monitor']} {summary['best']:.4f}); run folder {summary['run_dir']}; "
         f"{summary['wall_s']:.0f} s")
    return 0


def cmd_tune(args) -> int:
    _quiet_tensorflow()
    from birdnet_tf.tune.search import SearchSettings, run_search, set_distributed_env
    from birdnet_tf.tune.space import load_space

    set_distributed_env(args.chief, args.worker)
    cfg = _config(args)
    settings = SearchSettings(recipe=cfg, space=load_space(args.space, cfg), data_dir=Path(args.data),
                              out_dir=Path(args.out), cache_dir=args.cache, workers=args.workers,
                              **given(args, "tuner", "max_trials", "folds", "objective", "seed", "max_minutes"))
    run_search(settings, log=_log)
    return 0


def cmd_distill(args) -> int:
    _quiet_tensorflow()
    import dataclasses

    from birdnet_tf.distill.generations import distill_generations
    from birdnet_tf.distill.setup import with_teachers

    cfg = with_teachers(_config(args), args.teacher)
    if args.unlabeled:
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(
            cfg.distill, unlabeled=tuple(cfg.distill.unlabeled) + tuple(args.unlabeled)))
    distill_generations(cfg, args.data, args.out, generations=args.generations, cache_dir=args.cache,
                        workers=args.workers, evaluate=not args.no_eval, log=_log)
    return 0


def cmd_evaluate(args) -> int:
    _quiet_tensorflow()
    from birdnet_tf.evaluate.run import evaluate_run

    evaluate_run(args.run_dir, pooling=args.pooling, out_dir=args.out, log=_log, force=args.force,
                 **given(args, "split", model_file="model"))
    return 0


def cmd_export(args) -> int:
    _quiet_tensorflow()
    from birdnet_tf.export import export_run

    export_run(args.run_dir, args.out, force=args.force, window_s=args.window_s, hop_s=args.hop_s, log=_log,
               **given(args, model_file="model"))
    return 0


def cmd_tflite(args) -> int:
    from birdnet_tf.tflite import check_audio_only, check_outputs, validation_audio

    check_audio_only(args.run_dir)  # a metadata run is refused before any work is done
    quantizations = args.quantization.value() if isinstance(args.quantization, LibraryDefault) else args.quantization
    check_outputs(args.out, quantizations, args.force)
    check = args.check
    if not check:
        check = validation_audio(args.run_dir)
        _log(f"verifying on the run's {len(check)} validation recording(s) from split.csv" if check else
             "warning: no validation recordings of the run found; verifying on silence, noise and a tone only "
             "(pass --check AUDIO_OR_DIR)")
    _quiet_tensorflow()
    from birdnet_tf.tflite import export_tflite

    export_tflite(args.run_dir, args.out, quantizations, window_s=args.window_s, check_audio=check,
                  force=args.force, reference=args.reference, log=_log, embeddings=not args.no_embeddings)
    return 0


def _log_written(summary: str, failures: list[tuple[str, str]]) -> None:
    """Logs a command's summary line, then each skipped input with its reason."""
    _log(summary + (f"; {len(failures)} input(s) skipped:" if failures else ""))
    for path, reason in failures:
        _log(f"  {about(path, reason)}")


def cmd_predict(args) -> int:
    from birdnet_tf.infer.outputs import FOLDER_FORMATS, FORMATS, check_folder_output

    if args.format not in FORMATS:
        raise BirdnetError(f"unknown --format '{args.format}'; choose one of {', '.join(FORMATS)}")
    if Path(args.out).exists() and not args.force and (Path(args.out).is_file() or any(Path(args.out).iterdir())):
        raise BirdnetError(f"{args.out}: already exists; choose another --out or pass --force")  # before any work
    if args.format in FOLDER_FORMATS:
        check_folder_output(args.out, args.force)  # --force replaces only a folder predict wrote
    if args.hop_s is not None and args.window_s is None:
        raise BirdnetError("--hop-s needs --window-s (per-file scores use the model's own windows)")
    if args.model is None and args.server is None:
        raise BirdnetError("give an exported MODEL folder, or --server URL for a model behind TF Serving")
    from birdnet_tf.lite import LiteModel, is_tflite_folder

    remote = None
    if args.model is not None and not args.server and is_tflite_folder(args.model):
        remote = LiteModel(args.model)  # a birdnet-tf tflite folder: LiteRT only, TensorFlow is never imported
    else:
        _quiet_tensorflow()
    from birdnet_tf.infer.outputs import write_output
    from birdnet_tf.infer.predict import predict

    inputs = args.inputs
    if args.server:
        from birdnet_tf.infer.remote import RemoteModel

        if args.model is not None:  # with --server the first positional is an input, not a model
            inputs = [args.model, *inputs]
        labels = None
        if args.labels:
            labels = [s for s in Path(args.labels).read_text(encoding="utf-8").splitlines() if s.strip()]
        remote = RemoteModel(args.server, args.model_name, protocol=args.protocol, labels=labels,
                             sample_rate_hz=args.sample_rate)
    if not inputs:
        raise BirdnetError("no audio inputs given")
    table, failures = predict(args.model, inputs, window_s=args.window_s, hop_s=args.hop_s,
                              pooling=args.pooling, progress=not args.no_progress, log=_log, model=remote,
                              metadata=args.metadata, **given(args, "batch_size", "engine"))
    labels = list(table.columns[3:])
    class_ids = _class_ids(args, labels)
    written = write_output(table, labels, args.out, args.format, **given(args, "min_score"),
                           thresholds=args.thresholds, include=args.include, exclude=args.exclude,
                           merge_gap_s=args.merge_gap_s, class_ids=class_ids,
                           sample_rate_hz=table.attrs.get("sample_rate_hz"), force=args.force)
    n_files = table["file"].nunique()
    where = written[0] if len(written) == 1 else f"{args.out} ({len(written)} files)"
    _log_written(f"wrote {where}: {args.format} for {n_files} file(s), {len(table)} score rows", failures)
    return 0


def cmd_batch(args) -> int:
    from birdnet_tf.infer.beam import run_batch

    manifest = run_batch(args.model, args.inputs, args.out, window_s=args.window_s, hop_s=args.hop_s,
                         workers=args.workers, beam_options=args.beam_option, files_per_shard=args.files_per_shard,
                         parquet=False if args.no_parquet else None, force=args.force,
                         progress=not args.no_progress, log=_log)
    return 1 if manifest["failed"] and args.strict else 0


def _class_ids(args, labels: list[str]) -> dict[str, str] | None:
    """BirdCLEF class ids: --class-ids FILE, else the export's assets.extra/labels.csv, else None (labels)."""
    path = Path(args.class_ids) if args.class_ids else None
    if path is None and args.model and not args.server:
        candidate = Path(args.model) / "assets.extra" / "labels.csv"
        path = candidate if candidate.is_file() else None
    if path is None:
        return None
    import pandas as pd

    if not path.is_file():
        raise BirdnetError(f"{path}: class-id file does not exist")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"label", "class_id"} <= set(table.columns):
        raise BirdnetError(f"{path}: needs the columns label,class_id (has {', '.join(table.columns)})")
    ids = dict(zip(table["label"], table["class_id"]))
    missing = [label for label in labels if not ids.get(label)]
    if missing:
        raise BirdnetError(f"{path}: no class id for {len(missing)} label(s), e.g. {', '.join(missing[:3])}")
    return ids


def cmd_submit(args) -> int:
    if Path(args.out).exists() and not args.force:  # before loading TensorFlow
        raise BirdnetError(f"{args.out}: already exists; choose another --out or pass --force")
    _quiet_tensorflow()
    from birdnet_tf.infer.submit import DEFAULT_DROP_CLASSES, submit

    submit(args.task, args.models, args.audio, args.out, metadata=args.metadata, class_ids=args.class_ids,
           pooling=args.pooling, window_s=args.window_s, hop_s=args.hop_s, max_windows=args.max_windows,
           drop_classes=DEFAULT_DROP_CLASSES if args.drop_class is None else args.drop_class,
           force=args.force, log=_log, progress=not args.no_progress, weights=args.weights, **given(args, "engine"))
    return 0


def cmd_serve(args) -> int:
    _quiet_tensorflow()
    from birdnet_tf.serve import run_server

    run_server(args.model_dir, grpc_port=args.grpc_port, model_name=args.model_name, workers=args.workers, log=_log,
               **given(args, "host", "port", "max_body_mb"))
    return 0


def cmd_ensemble(args) -> int:
    needs_tf = any((Path(s) / "saved_model.pb").is_file() for s in args.sources)
    if needs_tf:
        _quiet_tensorflow()
    from birdnet_tf.infer.ensemble import apply_weights, fit_ensemble

    if args.weights:
        apply_weights(args.sources, args.weights, args.out, targets=args.targets, audio=args.audio,
                      force=args.force, log=_log, **given(args, "split"))
        return 0
    if args.targets is None:
        raise BirdnetError("--targets RUN_DIR_OR_DATASET is needed to fit weights (or give --weights FILE)")
    fit_ensemble(args.sources, args.targets, args.out, audio=args.audio, force=args.force, log=_log,
                 **given(args, "method", "trials", "steps", "seed", "split"))
    return 0


def cmd_queue(args) -> int:
    from birdnet_tf.train.queue import format_summary, run_worker

    summary = run_worker(args.jobs_file, args.workdir, gpu=args.gpu, once=args.once, wait=args.wait, log=_log,
                         **given(args, "retries", "heartbeat_s", "stale_after_s"))
    _log(format_summary(summary))
    return 1 if summary["failed"] else 0


def cmd_teacher(args) -> int:
    from birdnet_tf.distill.birdnet_teacher import teacher_birdnet

    teacher_birdnet(args.data, args.out, labels=args.labels, workers=args.workers, env=args.birdnet_env,
                    setup=args.setup, all_species=args.all_species, force=args.force,
                    progress=not args.no_progress, embeddings=args.embeddings, split=args.split, log=_log,
                    **given(args, "overlap_s"))
    return 0


def cmd_embed(args) -> int:
    from birdnet_tf.embed.embedder import embed_files

    done, failures = embed_files(args.model, args.inputs, args.out, window_s=args.window_s, hop_s=args.hop_s,
                                 force=args.force, progress=not args.no_progress, log=_log)
    _log_written(f"wrote {args.out}: vectors of {done} recording(s)", failures)
    return 0


def cmd_search(args) -> int:
    from birdnet_tf.embed.embedder import search

    if args.out and Path(args.out).exists() and not args.force:
        raise BirdnetError(f"{args.out}: already exists; choose another --out or pass --force")  # before any work
    hits = search(args.db, args.query, start_s=args.start_s, end_s=args.end_s, model=args.model, log=_log,
                  **given(args, "top"))
    import pandas as pd

    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 80):
        print(hits.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        from birdnet_tf.infer.predict import write_table

        _log(f"wrote {write_table(hits, args.out, force=args.force)}")
    if args.clips:
        from birdnet_tf.embed.search import cut_clips

        _log(f"cut {len(cut_clips(hits, args.clips, force=args.force))} clip(s) into {args.clips}")
    return 0


def cmd_head(args) -> int:
    from birdnet_tf.embed.head import train_head

    # no TensorFlow up front: a database from a TFLite folder is refused with its own message first
    train_head(args.db, args.labels, args.out, model=args.model, force=args.force, log=_log,
               **given(args, "epochs"))
    return 0


def cmd_config(args) -> int:
    import yaml

    from birdnet_tf.config import load_config

    if args.check is None:
        cfg = _config(args)
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    recipe = args.check or args.config
    cfg = load_config(recipe, args.set)
    from birdnet_tf.recipe_check import check_config

    problems = check_config(cfg)
    name = recipe or "the defaults"
    if not problems:
        _log(f"{name}: no problems found")
        return 0
    print(f"birdnet-tf: error: {name}: {len(problems)} problem(s):", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="birdnet-tf", description="Train, evaluate, export and run bird-sound classifiers.")
    parser.add_argument("--version", action="version", version=f"birdnet-tf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    recipe = argparse.ArgumentParser(add_help=False)
    recipe.add_argument("--config", metavar="RECIPE", default=None,
                        help="YAML/JSON recipe file, or the name of a packaged recipe (e.g. ofai2018_audio; see "
                             "birdnet_tf/recipes/) (default: the built-in defaults = recipe 'default')")
    recipe.add_argument("--set", metavar="SECTION.FIELD=VALUE", action="append", default=[],
                        help="override one setting, e.g. --set train.epochs=5 (repeatable; wins over the recipe)")
    def lib(target: str, name: str) -> LibraryDefault:
        return LibraryDefault(target, name)

    sort_fn, ensemble_fn = "birdnet_tf.data.sort.sort_dataset", "birdnet_tf.infer.ensemble.fit_ensemble"
    search, queue_fn = "birdnet_tf.tune.search.SearchSettings", "birdnet_tf.train.queue.run_worker"
    workers = argparse.ArgumentParser(add_help=False)
    workers.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                         help="processes for decoding audio (default: %(default)s)")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("prepare", parents=[recipe, workers, quiet],
                       help="decode a dataset into 16-bit mono WAV at the model's rate")
    p.add_argument("data", help="dataset folder (metadata.csv or one folder per class)")
    p.add_argument("--out", required=True, help="output folder (becomes a prepared dataset; resumable)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any file failed")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("sort", parents=[quiet],
                       help="sort recordings into train/ and val/ class folders (the 2018 baseline's split)")
    p.add_argument("source", help="BirdCLEF XML folder (one <Audio> XML per recording), or any dataset folder")
    p.add_argument("--out", required=True, help="new folder to write (refused if it exists and is not empty)")
    p.add_argument("--mode", choices=["copy", "move", "symlink"], default=lib(sort_fn, "mode"),
                   help="how audio gets there (default: %(default)s; move puts files back if the sort fails)")
    p.add_argument("--val-fraction", type=float, default=lib(sort_fn, "val_fraction"),
                   help="share of each class for validation, at least 1 file unless the class has only one "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=lib(sort_fn, "seed"),
                   help="seed of the per-class shuffles (default: %(default)s)")
    p.add_argument("--classes", metavar="FILE_OR_LIST", default=None,
                   help="only these classes: a file with one label or class id per line, or a comma list")
    p.add_argument("--max-classes", type=int, default=None, help="keep the N classes with the most files")
    p.add_argument("--min-files", type=int, default=lib(sort_fn, "min_files"),
                   help="drop classes with fewer files (default: %(default)s)")
    p.add_argument("--max-files", type=int, default=None, help="use at most N files per class (random)")
    p.add_argument("--oversample-to", type=int, default=None,
                   help="repeat training files of smaller classes up to N files (<stem>_dupN copies)")
    p.set_defaults(func=cmd_sort)

    p = sub.add_parser("extract", parents=[recipe, workers, quiet],
                       help="cut recordings into the 2018 baseline's PNG spectrogram chunks (signal/noise rule)")
    p.add_argument("source", help="dataset folder (metadata.csv, e.g. from birdnet-tf sort, or one folder per class)")
    p.add_argument("--out", required=True,
                   help="output folder: <split>/<label>/*.png, noise/*.png, chunks.csv (resumable; settings "
                        "from the recipe's chunks section, e.g. --set chunks.overlap_s=0.5)")
    p.add_argument("--seed", type=int, default=lib("birdnet_tf.data.extract.extract", "seed"),
                   help="seed of the choice of noise chunks (default: %(default)s)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any file failed")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train", parents=[recipe, workers], help="train a model; resumes an interrupted run")
    p.add_argument("--data", required=True, help="dataset folder, raw or prepared")
    p.add_argument("--out", required=True, help="run folder (created; resumed when it holds the same config)")
    p.add_argument("--cache", default=None,
                   help="folder to prepare raw audio into (default: a folder per dataset and rate under "
                        "$BIRDNET_TF_CACHE/prepared or ~/.cache/birdnet-tf/prepared)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation report at the end")
    p.add_argument("--strategy", default=None, choices=["auto", "one_device", "mirrored", "multi_worker"],
                   help="tf.distribute strategy (train.strategy; multi_worker reads TF_CONFIG; see README "
                        "\"Scaling out\")")
    p.add_argument("--teacher", action="append", default=[], metavar="RUN_EXPORT_OR_TABLE",
                   help="distil from this teacher (repeatable; adds to distill.teachers): a run folder, an "
                        "export folder or a teacher table (BirdNET-Analyzer CSV, Raven table, predict --window-s CSV)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", parents=[recipe, workers],
                       help="Keras Tuner search over recipe settings (resumable, recordist folds, distributed)")
    p.add_argument("--space", required=True, metavar="SPACE.yaml",
                   help="settings to search: dotted keys mapped to choices, ranges or bool (see README)")
    p.add_argument("--data", required=True, help="dataset folder, raw or prepared")
    p.add_argument("--out", required=True, metavar="TUNE_DIR",
                   help="search folder (created; the same command continues the search in it)")
    p.add_argument("--tuner", choices=["random", "bayesian", "hyperband"], default=lib(search, "tuner"),
                   help="(default: %(default)s)")
    p.add_argument("--max-trials", type=int, default=lib(search, "max_trials"),
                   help="trials in all (default: %(default)s)")
    p.add_argument("--folds", type=int, default=lib(search, "folds"),
                   help="K >= 2: score each trial by the mean over K recordist-grouped folds; "
                        "1: the recipe's own split (default: %(default)s)")
    p.add_argument("--objective", default=lib(search, "objective"),
                   help="validation score to maximise (default: %(default)s)")
    p.add_argument("--seed", type=int, default=lib(search, "seed"),
                   help="seed of the tuner and the folds (default: %(default)s)")
    p.add_argument("--max-minutes", type=float, default=lib(search, "max_minutes"),
                   help="start no trial that would end after this many minutes, judged by the mean trial time "
                        "so far (0: no limit; default: %(default)s)")
    p.add_argument("--cache", default=None, help="folder to prepare raw audio into (as for train)")
    p.add_argument("--chief", metavar="HOST:PORT", default=None,
                   help="distributed search: without --worker, serve the oracle at HOST:PORT; with it, "
                        "ask the chief there for trials (or set KERASTUNER_* variables)")
    p.add_argument("--worker", metavar="ID", default=None, help="run as worker ID of the chief at --chief")
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("distill", parents=[recipe, workers],
                       help="born-again generations: each generation's best model teaches the next")
    p.add_argument("--data", required=True, help="dataset folder, raw or prepared")
    p.add_argument("--out", required=True, help="folder of the generations' run folders gen-0, gen-1, ... (resumable)")
    p.add_argument("--generations", type=int, default=None, help="how many (default: distill.generations)")
    p.add_argument("--teacher", action="append", default=[], metavar="RUN_EXPORT_OR_TABLE",
                   help="teacher of generation 0 (repeatable; adds to distill.teachers)")
    p.add_argument("--unlabeled", nargs="+", default=[], metavar="DIR",
                   help="folders of recordings without labels, scored by the teachers and mixed into training "
                        "(distill.pseudo_ratio, distill.pseudo_min_confidence)")
    p.add_argument("--cache", default=None, help="folder to prepare raw audio into (default: as train)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation reports")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="metrics, report and plots of a run's model")
    p.add_argument("run_dir")
    p.add_argument("--split", default=lib("birdnet_tf.evaluate.run.evaluate_run", "split"),
                   choices=["val", "train", "all"], help="(default: %(default)s)")
    p.add_argument("--pooling", default=None, help="mean | max | logmeanexp[:a] | median (default: the run's)")
    p.add_argument("--model", default=lib("birdnet_tf.evaluate.run.evaluate_run", "model_file"),
                   help="model file in the run folder (default: %(default)s)")
    p.add_argument("--out", default=None, help="report folder (default: RUN_DIR/eval)")
    p.add_argument("--force", action="store_true", help="replace an earlier report in --out")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a verified SavedModel (waveform in, scores out)")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="export folder, e.g. models/birdnet/1 for TF Serving")
    p.add_argument("--model", default=lib("birdnet_tf.export.export_run", "model_file"),
                   help="model file in the run folder (default: %(default)s)")
    p.add_argument("--window-s", type=float, default=None,
                   help="window of the 'windows' signature (default: the model's excerpt, data.excerpt_s)")
    p.add_argument("--hop-s", type=float, default=None, help="hop of the 'windows' signature (default: --window-s)")
    p.add_argument("--force", action="store_true", help="replace an existing export folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("tflite", help="write TFLite models (built-in ops only), verified against the SavedModel")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="folder for model_<quantization>.tflite/.json and labels.txt")
    p.add_argument("--quantization", nargs="+", default=lib("birdnet_tf.tflite.export_tflite", "quantizations"),
                   choices=["float32", "float16", "int8"], metavar="Q",
                   help="float32, float16 (float16 weights), int8 (dynamic range) (default: %(default)s)")
    p.add_argument("--window-s", type=float, default=None,
                   help="fixed input window in seconds (default: the model's excerpt, data.excerpt_s)")
    p.add_argument("--check", nargs="+", default=None, metavar="AUDIO_OR_DIR",
                   help="recordings to verify on (default: the run's validation files from split.csv)")
    p.add_argument("--reference", default=None, metavar="EXPORT_DIR",
                   help="this run's SavedModel export to compare with (default: one exported to a temporary folder)")
    p.add_argument("--no-embeddings", action="store_true",
                   help="leave out the embedding halves embed_<q>.tflite (embed/search on the folder then refuse it)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_tflite)

    p = sub.add_parser("predict", parents=[quiet], help="score audio files with an exported model",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="formats: csv (wide scores), detections-csv, json, raven (folder of selection "
                              "tables), audacity (folder of label tracks),\n         birdclef-monophone, "
                              "birdclef-soundscape (use --window-s 5 for soundscapes)")
    p.add_argument("model", nargs="?", help="exported model folder (from birdnet-tf export), or a folder from "
                   "birdnet-tf tflite (scored with LiteRT, no TensorFlow); omit with --server")
    p.add_argument("inputs", nargs="*", metavar="AUDIO_OR_DIR", help="audio files and/or folders")
    p.add_argument("--out", required=True, help="file (or folder for raven/audacity) to write")
    p.add_argument("--format", default="csv", help="output format (default: %(default)s; see below)")
    p.add_argument("--window-s", type=float, default=None, help="one row per window of this length")
    p.add_argument("--hop-s", type=float, default=None, help="hop between windows (default: --window-s)")
    p.add_argument("--pooling", default=None, help="per-file pooling of window scores (default: the model's)")
    p.add_argument("--engine", default=lib("birdnet_tf.infer.predict.predict", "engine"), choices=["whole", "sliding"],
                   help="whole: run the network once over each recording (fast, streams long files); "
                        "sliding: score each window on its own through serving_default (default: %(default)s)")
    p.add_argument("--min-score", type=float, default=lib("birdnet_tf.infer.outputs.write_output", "min_score"),
                   help="global minimum score of a detection (default: %(default)s)")
    p.add_argument("--thresholds", default=None, help="per-species minimum scores (CSV label,threshold)")
    p.add_argument("--include", default=None, help="only these species (file, one label per line)")
    p.add_argument("--exclude", default=None, help="never these species (file, one label per line)")
    p.add_argument("--merge-gap-s", type=float, default=None,
                   help="merge consecutive detections of a species at most this far apart (e.g. 0)")
    p.add_argument("--class-ids", default=None,
                   help="CSV label,class_id for BirdCLEF files (default: the export's labels.csv, else labels)")
    p.add_argument("--batch-size", type=int, default=lib("birdnet_tf.infer.predict.predict", "batch_size"),
                   help="windows per model call (default: %(default)s)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="score through TF Serving (or birdnet-tf serve) at URL, e.g. http://localhost:8501")
    p.add_argument("--model-name", default="birdnet", help="model name on the server (default: %(default)s)")
    p.add_argument("--protocol", default=None, choices=["rest", "grpc"],
                   help="with --server (default: grpc for grpc:// URLs, else rest)")
    p.add_argument("--labels", default=None, help="with --server: labels.txt (default: asked from the server)")
    p.add_argument("--sample-rate", type=int, default=None, help="with --server: the model's rate in Hz")
    p.add_argument("--metadata", default=None, metavar="CSV",
                   help="for models trained with metadata (metadata.use only/combined): a CSV with a file (or "
                        "filename) column matched to the audio by path, name or stem, and any of date, time, "
                        "latitude, longitude, elevation; files without a row count as unknown")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("batch", parents=[quiet],
                       help="score an archive as an Apache Beam pipeline: sharded per-window tables, resumable",
                       description="Scores audio files, folders and globs with an export's whole-recording engine "
                                   "as an Apache Beam pipeline (pip install 'birdnet-tf[beam]'): by default "
                                   "Beam's DirectRunner in --workers local processes; Flink, Spark or Dataflow "
                                   "through --beam-option runner=... and that runner's options. Writes "
                                   "OUT/scores-*-of-*.csv (and .parquet) with predict --window-s's columns, "
                                   "OUT/manifest.json, and a completion record per file: the same command "
                                   "again resumes, scoring only files not done.")
    p.add_argument("model", help="exported model folder (from birdnet-tf export)")
    p.add_argument("inputs", nargs="+", metavar="AUDIO_DIR_OR_GLOB",
                   help="audio files, folders (searched recursively) and glob patterns (quote them: 'x/**/*.flac')")
    p.add_argument("--out", required=True, help="output folder (a rerun into it resumes)")
    p.add_argument("--window-s", type=float, default=None, help="window length (default: the model's excerpt)")
    p.add_argument("--hop-s", type=float, default=None, help="hop between windows (default: --window-s)")
    p.add_argument("--workers", type=int, default=2,
                   help="local worker processes of the DirectRunner (direct_num_workers; default: %(default)s)")
    p.add_argument("--beam-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a Beam pipeline option (repeatable), e.g. runner=FlinkRunner, flink_master=host:8081, "
                        "direct_running_mode=in_memory")
    p.add_argument("--files-per-shard", type=int, default=200, help="files per output table (default: %(default)s)")
    p.add_argument("--no-parquet", action="store_true", help="CSV shards only (default: also Parquet if pyarrow "
                                                              "is installed)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any input was not scored")
    p.add_argument("--force", action="store_true", help="start over: replace a batch folder birdnet-tf wrote")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("submit", parents=[quiet], help="write a BirdCLEF monophone or soundscape run file "
                                                      "from one exported model or an ensemble")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="exported model folder(s); several form an ensemble that averages their window scores")
    p.add_argument("--task", required=True, choices=["monophone", "soundscape"],
                   help="monophone: MediaId;ClassId;Probability;Rank per file; soundscape: "
                        "MediaId;HH:MM:SS-HH:MM:SS;ClassId;Probability per 5-s window (top 100 each)")
    p.add_argument("--audio", required=True, action="append", metavar="AUDIO_OR_DIR",
                   help="test recordings: a folder (searched recursively) or a file (repeatable)")
    p.add_argument("--out", required=True, help="run file to write")
    p.add_argument("--metadata", default=None, metavar="XML_DIR_OR_CSV",
                   help="BirdCLEF XML folder or CSV with media_id/MediaId and filename columns "
                        "(default: MediaId = the file's stem); models trained with metadata also read each file's "
                        "Date, Time, Latitude, Longitude, Elevation tags (CSV: date, time, ... columns) from it")
    p.add_argument("--weights", default=None, metavar="WEIGHTS_JSON",
                   help="weights.json of birdnet-tf ensemble: the window scores are combined by the weighted mean, "
                        "the i-th MODEL getting the weight of the i-th model listed in the file")
    p.add_argument("--class-ids", default=None, metavar="CSV",
                   help="CSV label,class_id (default: the first model's assets.extra/labels.csv, else the labels)")
    p.add_argument("--pooling", default=None,
                   help="monophone per-file pooling: median (default, the 2018 baseline's), mean, max, logmeanexp[:a]")
    p.add_argument("--max-windows", type=int, default=None,
                   help="monophone windows per file, spread evenly (default: chunks.max_chunks_per_file, 128)")
    p.add_argument("--window-s", type=float, default=None,
                   help="window length (default: monophone the model's excerpt, soundscape 5)")
    p.add_argument("--hop-s", type=float, default=None,
                   help="hop between windows (default: monophone the model's eval hop, soundscape the window)")
    p.add_argument("--engine", default=lib("birdnet_tf.infer.submit.submit", "engine"), choices=["whole", "sliding"],
                   help="whole: the network runs once per recording; sliding: each window on its own "
                        "(default: %(default)s)")
    p.add_argument("--drop-class", action="append", default=None, metavar="LABEL",
                   help="class left out of the run file, case-insensitive (repeatable; default: noise); "
                        "other scores are not renormalised")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("serve", help="serve exports with the TensorFlow Serving REST (and gRPC) API",
                       description="Serves exported models with TF Serving's v1 REST API (and optionally its gRPC "
                                   "API): GET /v1/models/NAME[/metadata], POST /v1/models/NAME:predict.")
    p.add_argument("model_dir", metavar="MODEL_DIR",
                   help="an export folder, a TF Serving base path (NAME/VERSION/ folders; the highest is served) "
                        "or a TF Serving models.config file")
    p.add_argument("--host", default=lib("birdnet_tf.serve.run_server", "host"),
                   help="address to listen on (default: %(default)s; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=lib("birdnet_tf.serve.run_server", "port"),
                   help="REST port (default: %(default)s, as TF Serving)")
    p.add_argument("--grpc-port", type=int, default=None, help="also serve gRPC on this port (TF Serving: 8500)")
    p.add_argument("--model-name", default=None, help="name of a single model (default: its folder name)")
    p.add_argument("--max-body-mb", type=float, default=lib("birdnet_tf.serve.run_server", "max_body_mb"),
                   help="largest request body accepted, in MB (default: %(default)s; larger: HTTP 413)")
    p.add_argument("--workers", type=int, default=None, help="inference threads (default: CPU count, at most 4)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ensemble", help="fit ensemble weights on validation predictions (OFAI: MAP + MAP-bg)",
                       description="Combines models by a weighted mean of their per-file scores. Weights are fitted "
                                   "on validation predictions to maximise MAP (MRR of the foreground species) + "
                                   "MAP-bg; writes OUT/weights.json and OUT/ensemble.csv.")
    p.add_argument("sources", nargs="+", metavar="PRED_OR_EXPORT",
                   help="per-model predictions: a predict CSV, a run's eval/scores.csv, a run folder, or an "
                        "export folder (scored on --audio, default: the target files)")
    p.add_argument("--targets", default=None, metavar="RUN_DIR_OR_DATASET",
                   help="species of the files: a run folder (its split.csv) or a dataset folder")
    p.add_argument("--out", required=True, help="folder for weights.json and ensemble.csv")
    p.add_argument("--method", default=lib(ensemble_fn, "method"), choices=["greedy", "optuna", "random"],
                   help="greedy: add the best model repeatedly, weights = counts; optuna: TPE; "
                        "random: seeded Dirichlet samples + local refinement (default: %(default)s)")
    p.add_argument("--trials", type=int, default=lib(ensemble_fn, "trials"),
                   help="evaluations of optuna/random (default: %(default)s)")
    p.add_argument("--steps", type=int, default=lib(ensemble_fn, "steps"),
                   help="most additions of greedy (default: %(default)s)")
    p.add_argument("--seed", type=int, default=lib(ensemble_fn, "seed"),
                   help="seed of optuna/random (default: %(default)s)")
    p.add_argument("--split", default=lib(ensemble_fn, "split"), choices=["val", "train", "all"],
                   help="split of --targets (default: %(default)s; a dataset without a split column: all)")
    p.add_argument("--audio", action="append", default=None, metavar="AUDIO_OR_DIR",
                   help="audio the exports score (repeatable; default: the target files)")
    p.add_argument("--weights", default=None, metavar="WEIGHTS_JSON",
                   help="apply saved weights (by position) instead of fitting, e.g. to test predictions")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("queue", help="run a shared list of training jobs (several workers, GPUs, machines)",
                       description="Takes the next free job of JOBS_FILE (lock files in WORKDIR, safe across "
                                   "processes and machines sharing WORKDIR) and runs it, until none is left. "
                                   "Start one worker per GPU (--gpu 0, --gpu 1, ...).")
    p.add_argument("jobs_file", metavar="JOBS_FILE",
                   help="one job a line: NAME TRAIN_ARGS... or NAME command: CMD...; or a YAML list of "
                        "{name, args} / {name, command}")
    p.add_argument("--workdir", required=True, help="shared folder: WORKDIR/NAME/{lock,done,failed,train.log,run}")
    p.add_argument("--gpu", default=None, metavar="ID", help="CUDA_VISIBLE_DEVICES of this worker's jobs")
    p.add_argument("--once", action="store_true", help="run at most one job")
    p.add_argument("--retries", type=int, default=lib(queue_fn, "retries"),
                   help="runs again of a failed job (default: %(default)s)")
    p.add_argument("--wait", action="store_true",
                   help="when the other jobs run elsewhere, keep waiting (and take over crashed ones)")
    p.add_argument("--heartbeat-s", type=float, default=lib(queue_fn, "heartbeat_s"),
                   help="lock heartbeat interval (default: %(default)s)")
    p.add_argument("--stale-after-s", type=float, default=lib(queue_fn, "stale_after_s"),
                   help="take over a lock whose heartbeat is older (default: %(default)s)")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("teacher", help="write a teacher table (per-window scores of an external teacher)")
    teachers = p.add_subparsers(dest="teacher", required=True, metavar="TEACHER")
    t = teachers.add_parser(
        "birdnet", parents=[quiet], help="BirdNET V2.4's complete per-window table for a dataset (resumable)",
        description="Scores every 3-s window of every recording of DATA with BirdNET V2.4 (no confidence "
                    "threshold) for the BirdNET species that map onto DATA's labels, in BirdNET's own environment "
                    "(.venv-birdnet; --setup builds it). BirdNET's weights are CC BY-NC-SA 4.0 and stay where "
                    "you installed them; see the README on models distilled from its outputs.")
    t.add_argument("data", help="dataset folder (metadata.csv, BirdCLEF XML or one folder per class); with --labels "
                                "any folder of audio files (e.g. unlabelled recordings for pseudo-labels)")
    t.add_argument("--out", required=True, help="the table to write (CSV; its settings go to OUT.json)")
    t.add_argument("--labels", metavar="LABELS", default=None,
                   help="the species to map BirdNET onto: a labels file, a run folder, an export or a dataset "
                        "(default: DATA's own labels); DATA is then scanned for audio files")
    t.add_argument("--overlap-s", type=float, default=lib("birdnet_tf.distill.birdnet_teacher.teacher_birdnet", "overlap_s"),
                   help="overlap of consecutive 3-s windows in seconds (default: %(default)s)")
    t.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="BirdNET inference processes (default: %(default)s)")
    t.add_argument("--birdnet-env", metavar="DIR", default=None,
                   help="the BirdNET environment (default: $BIRDNET_TF_BIRDNET_ENV, ./.venv-birdnet, "
                        "or .venv-birdnet beside a source checkout)")
    t.add_argument("--setup", action="store_true", help="build the BirdNET environment first if it is missing")
    t.add_argument("--all-species", action="store_true",
                   help="keep all 6,522 BirdNET species as columns, not only those that map onto DATA's labels")
    t.add_argument("--force", action="store_true",
                   help="replace a table this command wrote with other settings (resuming needs no --force)")
    t.add_argument("--embeddings", action="store_true",
                   help="write BirdNET's 1,024-d window embeddings (an .npz embedding table for distill.features) "
                        "instead of species scores")
    t.add_argument("--split", metavar="SPLIT_CSV", default=None,
                   help="a run's split.csv (or run folder): only its training files are scored or embedded")
    t.set_defaults(func=cmd_teacher)

    p = sub.add_parser("embed", parents=[quiet], help="write per-window embeddings of audio files to a database "
                       "(Parquet; resumable)")
    p.add_argument("model", help="run folder, exported model folder, or birdnet-tf tflite folder (LiteRT, no "
                   "TensorFlow)")
    p.add_argument("inputs", nargs="+", metavar="AUDIO_OR_DIR", help="audio files and/or folders")
    p.add_argument("--out", required=True, metavar="DB", help="database folder to write or add to")
    p.add_argument("--window-s", type=float, default=None, help="window length (default: the model's excerpt)")
    p.add_argument("--hop-s", type=float, default=None, help="hop between windows (default: --window-s)")
    p.add_argument("--force", action="store_true", help="start a database this command wrote afresh")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("search", help="find the windows of an embedding database most like a query clip")
    p.add_argument("db", help="database folder written by birdnet-tf embed")
    p.add_argument("--query", required=True, metavar="CLIP", help="audio clip to look for")
    p.add_argument("--start-s", type=float, default=None, help="use the query from here (seconds)")
    p.add_argument("--end-s", type=float, default=None, help="use the query up to here (seconds)")
    p.add_argument("--top", type=int, default=lib("birdnet_tf.embed.embedder.search", "top"),
                   help="hits per query window (default: %(default)s)")
    p.add_argument("--model", default=None, help="the database's model, where it moved (default: the path "
                   "the database names)")
    p.add_argument("--out", default=None, metavar="CSV", help="also write the hits table here")
    p.add_argument("--clips", default=None, metavar="DIR", help="cut each hit's audio into this folder")
    p.add_argument("--force", action="store_true", help="replace an existing --out / clip folder this wrote")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("head", help="fit a classifier for new sound classes on labelled windows of an embedding "
                       "database; writes an export that predict reads")
    p.add_argument("db", help="database folder written by birdnet-tf embed (from a run folder or an export)")
    p.add_argument("--labels", required=True, metavar="CSV", help="labelled stretches: file,start_s,end_s,label")
    p.add_argument("--out", required=True, help="export folder to write")
    p.add_argument("--model", default=None, help="the database's run folder or export, where it moved")
    p.add_argument("--epochs", type=int, default=lib("birdnet_tf.embed.head.train_head", "epochs"),
                   help="full-batch training steps (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an export this package wrote")
    p.set_defaults(func=cmd_head)

    p = sub.add_parser("config", parents=[recipe], help="print the resolved config as YAML, or check a recipe")
    p.add_argument("--check", nargs="?", const="", default=None, metavar="RECIPE",
                   help="instead of printing, check RECIPE (default: --config's) for every problem between and "
                        "within sections (sample rates, excerpt against the model's receptive field, teachers, "
                        "...); exits with status 2 if any is found")
    p.set_defaults(func=cmd_config)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"birdnet-tf: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    saved, warnings.formatwarning = warnings.formatwarning, _format_warning  # one line per warning
    try:
        return int(args.func(args) or 0)
    except BirdnetError as e:
        print(f"birdnet-tf: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in TRAIN_MODULES:
            raise
        print(f"birdnet-tf: error: '{args.command}' needs {e.name}, which the TensorFlow-free install lacks "
              "(it runs 'predict', and with pyarrow 'embed' and 'search', on a 'birdnet-tf tflite' folder); "
              "install the full package: "
              "pip install 'birdnet-tf[train]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("birdnet-tf: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = saved


if __name__ == "__main__":
    sys.exit(main())

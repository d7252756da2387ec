"""The ``birdnet-tf`` command: a thin layer over the library functions.

TensorFlow is imported lazily inside the subcommands, so ``--help`` is instant.
Errors a user can act on (:class:`~birdnet_tf.errors.BirdnetError`) are printed as
one line, ``birdnet-tf: error: ...``, with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from birdnet_tf import __version__
from birdnet_tf.errors import BirdnetError

DEFAULT_RECIPE = "pipelines/default.yaml"


#: what TensorFlow prints to fd 2 on every start of a machine without a GPU
_TF_NOISE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog|To enable the following instructions"
                       rb"|[IWE]\d{4} [\d:. ]+\d+ (cuda_\w+|cudart_stub|cpu_feature_guard)\.cc)")


def _quiet_tensorflow() -> None:
    """Imports TensorFlow without its CPU-only start-up chatter (real errors still show)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    from birdnet_tf.fileio import filtered_native_stderr

    logging.getLogger("absl").setLevel(logging.ERROR)
    with filtered_native_stderr(_TF_NOISE):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe prints here


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


def cmd_train(args) -> int:
    _quiet_tensorflow()
    from birdnet_tf.train.trainer import train

    cfg = _config(args)
    summary = train(cfg, args.data, args.out, cache_dir=args.cache, workers=args.workers,
                    evaluate=not args.no_eval, log=_log)
    _log(f"best model: {summary['best_model']} (epoch {summary['best_epoch']}, "
         f"{summary['monitor']} {summary['best']:.4f}); run folder {summary['run_dir']}; "
         f"{summary['wall_s']:.0f} s")
    return 0


def cmd_evaluate(args) -> int:
    _quiet_tensorflow()
    from birdnet_tf.evaluate.run import evaluate_run

    evaluate_run(args.run_dir, split=args.split, pooling=args.pooling, model_file=args.model,
                 out_dir=args.out, log=_log)
    return 0


def cmd_export(args) -> int:
    _quiet_tensorflow()
    from birdnet_tf.export import export_run

    export_run(args.run_dir, args.out, model_file=args.model, force=args.force, log=_log)
    return 0


def cmd_predict(args) -> int:
    if Path(args.out).exists() and not args.force:  # before any work is done
        raise BirdnetError(f"{args.out}: already exists; choose another --out or pass --force")
    if args.hop_s is not None and args.window_s is None:
        raise BirdnetError("--hop-s needs --window-s (per-file scores use the model's own windows)")
    _quiet_tensorflow()
    from birdnet_tf.infer.predict import predict, write_table

    table, failures = predict(args.model, args.inputs, window_s=args.window_s, hop_s=args.hop_s,
                              pooling=args.pooling, batch_size=args.batch_size,
                              progress=not args.no_progress, log=_log)
    out = write_table(table, args.out, force=args.force)
    n_files = table["file"].nunique()
    _log(f"wrote {out}: {len(table)} rows for {n_files} file(s)"
         + (f"; {len(failures)} input(s) skipped:" if failures else ""))
    for path, reason in failures:
        _log(f"  {path}: {reason}")
    return 0


def cmd_config(args) -> int:
    import yaml

    cfg = _config(args)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="birdnet-tf", description="Train, evaluate, export and run bird-sound classifiers.")
    parser.add_argument("--version", action="version", version=f"birdnet-tf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    recipe = argparse.ArgumentParser(add_help=False)
    recipe.add_argument("--config", metavar="RECIPE", default=None,
                        help="YAML/JSON recipe (default: the built-in defaults = pipelines/default.yaml)")
    recipe.add_argument("--set", metavar="SECTION.FIELD=VALUE", action="append", default=[],
                        help="override one setting, e.g. --set train.epochs=5 (repeatable; wins over the recipe)")
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

    p = sub.add_parser("train", parents=[recipe, workers], help="train a model; resumes an interrupted run")
    p.add_argument("--data", required=True, help="dataset folder, raw or prepared")
    p.add_argument("--out", required=True, help="run folder (created; resumed when it holds the same config)")
    p.add_argument("--cache", default=None,
                   help="folder to prepare raw audio into (default: a folder per dataset and rate under "
                        "$BIRDNET_TF_CACHE/prepared or ~/.cache/birdnet-tf/prepared)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation report at the end")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics, report and plots of a run's model")
    p.add_argument("run_dir")
    p.add_argument("--split", default="val", choices=["val", "train", "all"])
    p.add_argument("--pooling", default=None, help="mean | max | logmeanexp[:a] | median (default: the run's)")
    p.add_argument("--model", default="best.keras", help="model file in the run folder (default: %(default)s)")
    p.add_argument("--out", default=None, help="report folder (default: RUN_DIR/eval)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a verified SavedModel (waveform in, scores out)")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="export folder, e.g. models/birdnet/1 for TF Serving")
    p.add_argument("--model", default="best.keras", help="model file in the run folder (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing export folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", parents=[quiet], help="score audio files with an exported model")
    p.add_argument("model", help="exported model folder (from birdnet-tf export)")
    p.add_argument("inputs", nargs="+", metavar="AUDIO_OR_DIR", help="audio files and/or folders")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--window-s", type=float, default=None, help="one row per window of this length")
    p.add_argument("--hop-s", type=float, default=None, help="hop between windows (default: --window-s)")
    p.add_argument("--pooling", default=None, help="per-file pooling (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("config", parents=[recipe], help="print the resolved config as YAML")
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
    except KeyboardInterrupt:
        print("birdnet-tf: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = saved


if __name__ == "__main__":
    sys.exit(main())

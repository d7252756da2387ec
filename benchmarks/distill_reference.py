"""BirdNET's rows of the distillation benchmark (issue 11), and the soundscape score of any model.

For ``benchmarks/distill_xc_pr20.py``: on the recordist-grouped validation split of a dataset
(the split ``birdnet-tf train`` makes with the recipe's ``data.val_fraction``, ``data.seed`` and
``data.split_by``):

* :func:`birdnet_file_rows` — BirdNET V2.4 zero-shot, file level: the maximum over a file's
  3-s windows, read from a complete teacher table (``birdnet-tf teacher birdnet``); species
  BirdNET lacks score 0. The same metrics as ``evaluate`` (MRR, MLRAP-bg, cmAP, top-1), on all
  validation files and on those of the species BirdNET knows.
* :func:`validation_soundscapes` — soundscapes built from the validation recordings
  (:mod:`soundscapes`), cached.
* :func:`birdnet_soundscape_row` / :func:`model_soundscape_row` — window-level cmAP and LRAP
  over windows with a bird, of BirdNET and of an exported birdnet-tf model (``predict`` with
  5-s windows).

    python benchmarks/distill_reference.py --data ../shared/data/xc-pr20 \\
        --table /work/tables/xc-pr20-birdnet.csv [--export runs/x/export ...] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from soundscapes import build_soundscapes, read_truth, score_windows  # noqa: E402

from birdnet_tf.errors import BirdnetError  # noqa: E402


def validation_split(data: str | os.PathLike, cfg=None) -> tuple[pd.DataFrame, list[str]]:
    """``(validation catalog, labels)`` as ``birdnet-tf train`` splits ``data`` with ``cfg``."""
    from birdnet_tf.config import load_config
    from birdnet_tf.data.catalog import load_catalog
    from birdnet_tf.data.labels import LabelSet
    from birdnet_tf.data.split import split_catalog

    cfg = cfg or load_config(None, [])
    catalog = load_catalog(data)
    labels = list(LabelSet.from_catalog(catalog))
    _, val = split_catalog(catalog, cfg.data.val_fraction, cfg.data.seed, cfg.data.split_by)
    return val.reset_index(drop=True), labels


def _truth(val: pd.DataFrame, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from birdnet_tf.data.catalog import parse_secondary_labels

    index = {lab: i for i, lab in enumerate(labels)}
    primary = np.array([index[str(v)] for v in val["primary_label"]])
    bg = np.zeros((len(val), len(labels)), bool)
    for i, v in enumerate(val["secondary_labels"]):
        for s in (v if isinstance(v, list) else parse_secondary_labels(v)):
            if s in index:
                bg[i, index[s]] = True
    return primary, bg


def file_metrics(scores: np.ndarray, val: pd.DataFrame, labels: list[str]) -> dict:
    """MRR, MLRAP-bg, cmAP, top-1 (and n_files) of file-level ``scores`` ``[val files, labels]``."""
    from birdnet_tf.evaluate.metrics import evaluate_scores

    primary, bg = _truth(val, labels)
    r = evaluate_scores(scores, primary, bg)
    return {k: r[k] for k in ("mrr", "mlrap_bg", "cmap", "top1", "n_files")}


def birdnet_file_rows(table_csv: str | os.PathLike, val: pd.DataFrame, labels: list[str]) -> dict:
    """BirdNET zero-shot on the validation files, from a complete teacher table (max over windows)."""
    from birdnet_tf.distill.tables import read_teacher_table
    from birdnet_tf.distill.targets import match_table_files

    t = read_teacher_table(table_csv, labels, log=lambda _m: None)
    keys = list(val["key"])
    where = dict(zip(keys, match_table_files(t, keys, keys)))
    missing = [k for k in keys if where[k] < 0]
    if missing:
        raise BirdnetError(f"{table_csv}: lacks {len(missing)} validation file(s), e.g. {missing[:3]}")
    s = np.where(t.known, t.scores, 0.0)
    scores = np.stack([s[t.file_index == where[k]].max(axis=0) for k in val["key"]])
    out = {"all": file_metrics(scores, val, labels)}
    known = t.class_known[[labels.index(str(v)) for v in val["primary_label"]]]
    out["known_species"] = file_metrics(scores[known], val[known].reset_index(drop=True), labels)
    out["species_known"] = int(t.class_known.sum())
    return out


def validation_soundscapes(val: pd.DataFrame, out_dir: str | os.PathLike, seed: int = 0) -> dict:
    """Soundscapes (cached in ``out_dir``) from the validation recordings, each used twice."""
    n = int(np.ceil(2 * len(val) / 15))
    return build_soundscapes(list(zip(val["path"], val["primary_label"], strict=True)), out_dir, n_soundscapes=n,
                             seed=seed)


def birdnet_soundscape_row(manifest: dict, labels: list[str], cache: str | os.PathLike, env=None) -> dict:
    """BirdNET's window-level scores on the soundscapes (its 3-s windows pooled onto the 5-s grid)."""
    from birdnet_tf.distill.birdnet_teacher import birdnet_windows

    scores = birdnet_windows(manifest["files"], labels, cache, env=env)
    return score_windows(scores, read_truth(manifest["truth"]), labels)


def model_soundscape_row(export_dir: str | os.PathLike, manifest: dict) -> dict:
    """An exported birdnet-tf model's window-level scores on the soundscapes (``predict --window-s 5``)."""
    from birdnet_tf.infer.predict import predict

    table, _ = predict(export_dir, list(manifest["files"]), window_s=manifest["window_s"], progress=False,
                       log=lambda _m: None)
    labels = [c for c in table.columns if c not in ("file", "start_s", "end_s")]
    return score_windows(table, read_truth(manifest["truth"]), labels)


def model_file_row(export_dir: str | os.PathLike, val: pd.DataFrame, labels: list[str]) -> dict:
    """An exported model's file-level metrics on the validation files (``predict``, its own pooling)."""
    from birdnet_tf.infer.predict import predict

    table, _ = predict(export_dir, list(val["path"]), progress=False, log=lambda _m: None)
    pooled = table.groupby("file", sort=False)[labels].max()
    return file_metrics(pooled.loc[list(val["path"])].to_numpy(np.float64), val, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--table", required=True, help="BirdNET's complete table of --data (birdnet-tf teacher birdnet)")
    ap.add_argument("--export", nargs="*", default=[], help="exported models to score the same way")
    ap.add_argument("--cache", default=str(HERE.parent / ".cache" / "distill-soundscapes"))
    ap.add_argument("--birdnet-env", default=None)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()

    val, labels = validation_split(args.data)
    print(f"validation: {len(val)} files, {val['recordist'].nunique()} recordists (recordist-grouped split)")
    rows = {}
    t = time.time()
    rows["birdnet_file"] = birdnet_file_rows(args.table, val, labels)
    man = validation_soundscapes(val, Path(args.cache) / "soundscapes")
    print(f"soundscapes: {len(man['files'])} x {man['duration_s']:g} s, {man['n_windows']} windows "
          f"({man['n_windows_with_bird']} with a bird)")
    rows["birdnet_soundscape"] = birdnet_soundscape_row(man, labels, Path(args.cache) / "birdnet-windows.csv",
                                                        args.birdnet_env)
    rows["birdnet_s"] = round(time.time() - t, 1)
    for e in args.export:
        rows[f"model:{e}"] = {"file": model_file_row(e, val, labels), "soundscape": model_soundscape_row(e, man)}
    f = rows["birdnet_file"]
    print(f"BirdNET zero-shot, file level, all {f['all']['n_files']} files:   "
          + "  ".join(f"{k} {f['all'][k]:.3f}" for k in ("mrr", "mlrap_bg", "cmap", "top1")))
    print(f"BirdNET zero-shot, file level, {f['known_species']['n_files']} files of its {f['species_known']} species: "
          + "  ".join(f"{k} {f['known_species'][k]:.3f}" for k in ("mrr", "mlrap_bg", "cmap", "top1")))
    s = rows["birdnet_soundscape"]
    print(f"BirdNET zero-shot, soundscape windows: cmAP {s['cmap']:.3f}  LRAP over windows with a bird "
          f"{s['lrap_bird']:.3f}")
    for e in args.export:
        r = rows[f"model:{e}"]
        print(f"{e}: file " + "  ".join(f"{k} {r['file'][k]:.3f}" for k in ("mrr", "mlrap_bg", "cmap", "top1"))
              + f"; soundscape windows cmAP {r['soundscape']['cmap']:.3f}  LRAP-bird {r['soundscape']['lrap_bird']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

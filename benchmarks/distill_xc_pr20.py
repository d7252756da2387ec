"""Distillation on xc-pr20 (issue 11): students with and without teachers against BirdNET V2.4.

Every row is an ordinary birdnet-tf run on the recordist-grouped split of the default recipe
(166 training files; 41 validation files by 5 recordists never trained on), exported and
scored like BirdNET on the same files with the same metrics:

* **file level**: ``predict`` on each validation recording (whole-recording engine), the
  file's score per class = max over its rows; MRR, MLRAP with background species, cmAP, top-1;
* **soundscape windows**: five-minute soundscapes built from the validation recordings
  (``benchmarks/soundscapes.py``: 6-s stretches at −5..15 dB in a synthetic noise bed, truth
  per 5-s window), window-level cmAP (empty windows are negatives) and LRAP over windows
  with a bird.

Rows: the default recipe without teachers; born-again generations 1 and 2 (each generation's
best model teaches the next); the mean of those three own models as teacher (as window tables,
see :func:`own_table`); BirdNET's
complete window table as teacher (the shipped ``pipelines/distill_birdnet.yaml``, run twice
for the spread); BirdNET + the own ensemble as teachers; BirdNET's table plus its embeddings of
the training files as feature targets (``birdnet+features``, twice; ``distill.features``); BirdNET zero-shot itself (its
labels mapped; the two species it lacks score 0).

    bash benchmarks/birdnet_env.sh                                     # BirdNET's own environment
    birdnet-tf teacher birdnet ../shared/data/xc-pr20 --out runs/xc-pr20-birdnet.csv
    python benchmarks/distill_xc_pr20.py --table runs/xc-pr20-birdnet.csv [--runs runs/distill-bench]
        [--rows default,ban-1,...] [--reuse ROW=RUN_DIR ...] [--json out.json]
        [--features EMB.npz --feature-set distill.feature_weight=1 ...]   # the birdnet+features rows

Run folders are resumable: the same command continues interrupted rows and skips finished
ones. ``--reuse ROW=RUN_DIR`` scores an existing run folder as that row; ``train`` refuses it
unless it holds exactly the row's recipe and teachers, so a reused row is the same experiment.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import REPO, machine, xc_pr20  # noqa: E402

SHIPPED = REPO / "pipelines" / "distill_birdnet.yaml"
ROWS = ("default", "ban-1", "ban-2", "own-ensemble", "birdnet", "birdnet-run2", "birdnet+own",
        "birdnet+features", "birdnet+features-run2")
OWN = ("default", "ban-1", "ban-2")


def own_table(run: Path, data: Path) -> Path:
    """An own model as a teacher table: its export's 3-s window scores of every recording of ``data``
    (``predict --window-s 3``, the same grid as BirdNET's table), written once as ``RUN/teacher-windows.csv``.

    The own-ensemble rows use their members this way rather than as model teachers: the members'
    forward passes then cost nothing during training (what 2 CPU cores allow), at the price of
    targets from the clean windows rather than from each augmented excerpt.
    """
    out = run / "teacher-windows.csv"
    if out.is_file():
        return out
    from birdnet_tf.data.catalog import load_catalog
    from birdnet_tf.export import export_run
    from birdnet_tf.infer.predict import predict

    export = run / "export"
    if not (export / "saved_model.pb").is_file():
        export_run(run, export)
    catalog = load_catalog(data)
    table, _ = predict(export, list(catalog["path"]), window_s=3.0, progress=False, log=lambda _m: None)
    key_of = dict(zip(catalog["path"].astype(str), catalog["key"].astype(str)))
    table["file"] = [key_of.get(str(f), str(f)) for f in table["file"]]
    tmp = out.with_name(out.name + ".part")
    table.to_csv(tmp, index=False)
    tmp.replace(out)
    return out


def row_recipe(row: str, run_of: dict, table: str, data: Path, features: str | None = None,
               feature_sets: tuple[str, ...] = ()) -> tuple[str | None, list[str]]:
    """``(recipe file or None, --set overrides)`` of a row; ``run_of`` maps rows to run folders;
    ``features``: BirdNET's embedding table of the training files (the ``birdnet+features`` rows,
    the shipped recipe plus ``distill.features`` and ``feature_sets``)."""
    def teachers(paths):
        return [f"distill.teachers=[{','.join(str(p) for p in paths)}]"]

    if row == "default":
        return None, []
    if row == "ban-1":
        return None, teachers([run_of["default"]])
    if row == "ban-2":
        return None, teachers([run_of["ban-1"]])
    if row == "own-ensemble":
        return None, teachers([own_table(run_of[r], data) for r in OWN])
    if row in ("birdnet", "birdnet-run2"):
        return str(SHIPPED), teachers([table])
    if row == "birdnet+own":  # BirdNET weighs as much as the three own models together
        weights = Path(run_of[row]).parent / "birdnet+own.weights.json"
        weights.parent.mkdir(parents=True, exist_ok=True)
        own = [own_table(run_of[r], data) for r in OWN]
        weights.write_text(json.dumps({"weights": {str(Path(table).resolve()): 3.0,
                                                   **{str(p.resolve()): 1.0 for p in own}}}))
        return str(SHIPPED), teachers([table, *own]) + [f"distill.weights={weights}"]
    if row in ("birdnet+features", "birdnet+features-run2"):
        if not features:
            raise SystemExit(f"row {row} needs --features EMB.npz (teacher birdnet --embeddings --split ...)")
        return str(SHIPPED), teachers([table]) + [f"distill.features={features}", *feature_sets]
    raise SystemExit(f"unknown row {row!r} (rows: {', '.join(ROWS)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", required=True, help="BirdNET's complete table of xc-pr20 (birdnet-tf teacher birdnet)")
    ap.add_argument("--runs", default=str(REPO / "runs" / "distill-bench"), help="folder of the rows' run folders")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to train and score")
    ap.add_argument("--reuse", action="append", default=[], metavar="ROW=RUN_DIR",
                    help="an existing run folder (same recipe and teachers) to use as ROW")
    ap.add_argument("--features", default=None,
                    help="BirdNET's embedding table of the training files, for the birdnet+features rows")
    ap.add_argument("--feature-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra settings of the birdnet+features rows (e.g. distill.feature_weight=3)")
    ap.add_argument("--cache", default=str(REPO / ".cache" / "distill-soundscapes"))
    ap.add_argument("--birdnet-env", default=None)
    ap.add_argument("--json", default=None, help="write every figure here too")
    args = ap.parse_args()

    from distill_reference import (birdnet_file_rows, birdnet_soundscape_row, model_file_row,
                                   model_soundscape_row, validation_soundscapes, validation_split)

    from birdnet_tf.config import load_config
    from birdnet_tf.export import export_run
    from birdnet_tf.train.trainer import train

    data = xc_pr20()
    runs = Path(args.runs)
    run_of = {r: runs / r for r in ROWS}
    for item in args.reuse:
        row, _, path = item.partition("=")
        if row not in ROWS or not path:
            raise SystemExit(f"--reuse {item!r}: expected ROW=RUN_DIR with ROW one of {', '.join(ROWS)}")
        run_of[row] = Path(path)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in wanted:
        if r not in ROWS:
            raise SystemExit(f"unknown row {r!r} (rows: {', '.join(ROWS)})")
    print(f"machine: {machine()}")

    val, labels = validation_split(data)
    print(f"validation: {len(val)} files by {val['recordist'].nunique()} recordists (recordist-grouped split)")
    man = validation_soundscapes(val, Path(args.cache) / "soundscapes")
    print(f"soundscapes: {len(man['files'])} x {man['duration_s']:g} s, {man['n_windows']} windows "
          f"({man['n_windows_with_bird']} with a bird)")

    results: dict[str, dict] = {}
    for row in wanted:
        recipe, sets = row_recipe(row, run_of, args.table, data, args.features, tuple(args.feature_set))
        run = run_of[row]
        print(f"\n=== {row}: {recipe or 'default recipe'} {' '.join(sets)} -> {run}", flush=True)
        cfg = load_config(recipe, sets)
        train(cfg, data, run, evaluate=False)
        export = run / "export"
        if not (export / "saved_model.pb").is_file():
            export_run(run, export)
        state = json.loads((run / "state.json").read_text())
        results[row] = {"run": str(run), "train_min": state.get("elapsed_s", 0) / 60,
                        "best_epoch": state.get("best_epoch"),
                        "file": model_file_row(export, val, labels),
                        "soundscape": model_soundscape_row(export, man)}

    t = time.time()
    bn_file = birdnet_file_rows(args.table, val, labels)
    bn_sound = birdnet_soundscape_row(man, labels, Path(args.cache) / "birdnet-windows.csv", args.birdnet_env)
    results["BirdNET V2.4 zero-shot"] = {"file": bn_file["all"], "soundscape": bn_sound, "train_min": None,
                                         "known_species_file": bn_file["known_species"], "birdnet_s": time.time() - t}

    print("\n=== distill_xc_pr20 ===")
    print(f"file level: {len(val)} validation files; soundscape windows: {man['n_windows']} "
          f"({man['n_windows_with_bird']} with a bird)")
    head = f"{'row':<24} {'MRR':>6} {'MLRAP-bg':>8} {'cmAP':>6} {'top-1':>6} | {'win cmAP':>8} {'LRAP-bird':>9} | {'train min':>9}"
    print(head)
    print("-" * len(head))
    for row, r in results.items():
        f, s = r["file"], r["soundscape"]
        minutes = "" if r["train_min"] is None else f"{r['train_min']:.1f}"
        print(f"{row:<24} {f['mrr']:>6.3f} {f['mlrap_bg']:>8.3f} {f['cmap']:>6.3f} {f['top1']:>6.3f} | "
              f"{s['cmap']:>8.3f} {s['lrap_bird']:>9.3f} | {minutes:>9}")
    k = bn_file["known_species"]
    print(f"(BirdNET on the {k['n_files']} files of the {bn_file['species_known']} species it knows: "
          f"MRR {k['mrr']:.3f}, cmAP {k['cmap']:.3f})")
    for name, pair in (("shipped recipe", ("birdnet", "birdnet-run2")),
                       ("with BirdNET's embeddings", ("birdnet+features", "birdnet+features-run2"))):
        both = [results[r] for r in pair if r in results]
        if len(both) == 2:
            for key, part in (("mrr", "file"), ("cmap", "file"), ("cmap", "soundscape")):
                a, b = (x[part][key] for x in both)
                print(f"{name}, two runs: {part} {key} {min(a, b):.3f}..{max(a, b):.3f} (mean {(a + b) / 2:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

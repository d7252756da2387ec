"""A bounded hyperparameter search on xc-pr20 with recordist folds, against the default recipe.

Scores the default recipe on K recordist-grouped folds, then runs ``birdnet-tf tune`` (the
same folds, the same epochs per run) over learning rate, width, excerpt length,
augmentation strengths and temporal pooling for what is left of ``--minutes``, and prints
the best trial against the default: fold mean, spread and the paired per-fold difference,
and whether the winner should become the default.

    python benchmarks/tune_xc_pr20.py [--minutes 60] [--folds 3] [--tuner bayesian] [--out runs/tune-xc-pr20]
                                      [--set train.epochs=10 ...]

Every run (the default's folds, the trials) trains ``train.epochs`` (default here: 10, so a
trial of 3 folds takes ~6 min on 2 cores; the recipe's own 50 would leave room for one
trial). The search stops before a trial that would end after ``--minutes`` (at the mean
trial time so far), counting the default's runs. Resumable: running the same command again
reuses finished runs and continues the search.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import yaml

from _common import REPO, machine, xc_pr20

#: What the issue asks to search (learning rate, width, excerpt length, augmentation strengths,
#: temporal pooling), in ranges around the hand-found defaults
SPACE = REPO / "pipelines" / "spaces" / "default-space.yaml"
#: Every run of the benchmark (default and trials) is scaled to this unless --set says otherwise
SCALE = ["train.epochs=10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "tune-xc-pr20"))
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-time budget of default + search")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--tuner", default="bayesian", choices=["random", "bayesian", "hyperband"])
    ap.add_argument("--max-trials", type=int, default=40)
    ap.add_argument("--config", default=None, help="the recipe to compare against (default: the built-in default)")
    ap.add_argument("--set", action="append", default=[], help="override for every run, e.g. train.epochs=10")
    args = ap.parse_args()

    from birdnet_tf.config import load_config
    from birdnet_tf.train.trainer import train
    from birdnet_tf.tune.search import SearchSettings, check_search_folder, load_folds, run_search
    from birdnet_tf.tune.space import load_space

    t0 = time.time()
    out = Path(args.out)
    recipe = load_config(args.config, [*SCALE, *args.set])
    space = load_space(SPACE, recipe)
    settings = SearchSettings(recipe=recipe, space=space, data_dir=xc_pr20(), out_dir=out / "search",
                              tuner=args.tuner, max_trials=args.max_trials, folds=args.folds,
                              objective="val_mlrap_bg", workers=2)
    print(f"machine: {machine()}")
    out.mkdir(parents=True, exist_ok=True)
    check_search_folder(settings)  # refuses a folder of another search before anything trains
    folds_table = load_folds(settings)  # the search computes the same folds (same data, seed)
    folds = sorted(f for f in folds_table["fold"].unique() if f >= 0)

    # the default recipe, scored the same way: same folds, epochs, monitor
    default_cfg = recipe.replace({"train.monitor": settings.objective})
    default = []
    for f in folds:
        keys = list(folds_table.loc[folds_table["fold"] == f, "key"])
        summary = train(default_cfg, settings.data_dir, out / "default" / f"fold_{f}", evaluate=False, val_keys=keys)
        default.append(float(summary["best"]))
    default_min = (time.time() - t0) / 60
    print(f"default recipe: {np.mean(default):.4f} ± {np.std(default):.4f} ({default_min:.1f} min so far)")

    left = args.minutes - (time.time() - t0) / 60
    if left <= 0:
        raise SystemExit(f"--minutes {args.minutes:g} spent on the default's runs; nothing left for a search")
    settings.max_minutes = left
    run_search(settings)
    wall = (time.time() - t0) / 60

    import pandas as pd

    table = pd.read_csv(settings.out_dir / "trials.csv")
    done = table[table["status"] == "COMPLETED"]
    obj = settings.objective
    cols = [f"{obj}_fold{f}" for f in folds]
    print("\n=== tune_xc_pr20 ===")
    sizes = ", ".join(str(int((folds_table["fold"] == f).sum())) for f in folds)
    never = int((folds_table["fold"] < 0).sum())
    print(f"{args.tuner} search, {len(table)} trials ({len(done)} completed) + the default's {len(folds)} runs in "
          f"{wall:.1f} min (budget {args.minutes:g}); {machine()}")
    print(f"{len(folds)} recordist folds of xc-pr20, validation files per fold: {sizes}"
          + (f" ({never} files of single-recordist classes always train)" if never else "")
          + f"; every run {recipe.train.epochs} epochs, score = best epoch's {obj}")
    print("space: " + "; ".join(p.describe() for p in space.params))
    head = f"{'':<22}{'mean':>8}{'std':>8}" + "".join(f"{'fold ' + str(f):>9}" for f in folds)
    print(head)
    print(f"{'default recipe':<22}{np.mean(default):>8.4f}{np.std(default):>8.4f}"
          + "".join(f"{v:>9.4f}" for v in default))
    if done.empty:
        print("no trial completed: no comparison")
        return
    best = done.loc[done[obj].idxmax()]
    scores = [float(best[c]) for c in cols]
    print(f"{'best trial ' + str(best['trial']):<22}{best[obj]:>8.4f}{best[obj + '_std']:>8.4f}"
          + "".join(f"{v:>9.4f}" for v in scores))
    diff = np.asarray(scores) - np.asarray(default)
    se = float(np.std(diff, ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    print(f"{'paired difference':<22}{diff.mean():>+8.4f}{'':>8}" + "".join(f"{v:>+9.4f}" for v in diff)
          + f"   (standard error {se:.4f})")
    print(f"median trial: {done[obj].median():.4f}; trials above the default's mean: "
          f"{int((done[obj] > np.mean(default)).sum())} of {len(done)}")
    print("best settings: " + ", ".join(f"{k}={best[k]}" for k in space.keys))
    better_everywhere = bool(np.all(diff > 0))
    clear = diff.mean() > 2 * se if np.isfinite(se) else False
    if clear and better_everywhere:
        verdict = ("yes, provisionally: it beats the default on every fold by more than twice the standard error of "
                   "the paired difference; confirm with a full-length run (the best of many trials is optimistic)")
    elif diff.mean() > 0:
        verdict = ("no: its lead is within the noise of the folds (or not on every fold); being the best of "
                   f"{len(done)} trials, it is expected to look better than it is")
    else:
        verdict = "no: it does not beat the default"
    print(f"should it become the default? {verdict}")
    print(f"results: {settings.out_dir / 'trials.csv'}, {settings.out_dir / 'best.yaml'}, "
          f"{settings.out_dir / 'trials.png'}")
    (out / "summary.yaml").write_text(yaml.safe_dump({
        "default": {"mean": float(np.mean(default)), "std": float(np.std(default)), "folds": default},
        "best": {"trial": str(best["trial"]), "mean": float(best[obj]), "std": float(best[obj + "_std"]),
                 "folds": scores, "settings": {k: (best[k].item() if hasattr(best[k], "item") else best[k])
                                               for k in space.keys}},
        "paired_difference": {"mean": float(diff.mean()), "se": se}, "trials": int(len(table)),
        "completed": int(len(done)), "wall_min": round(wall, 1), "verdict": verdict}, sort_keys=False))


if __name__ == "__main__":
    main()

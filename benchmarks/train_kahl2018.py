"""The 2018 baseline recipe on xc-pr20 sorted from its BirdCLEF XML, next to the default recipe.

1. ``birdnet-tf sort`` of ``xc-pr20/xml`` (symlinks, the baseline's per-class split) into a
   cache folder;
2. ``train`` with ``pipelines/kahl2018_baseline.yaml`` on it — by default validated on the
   same recordist-grouped split as the default recipe (``data.split_by=recordist``), so
   both face recordists they never heard; ``--sort-split`` uses the baseline's own split;
3. prints the best model's validation metrics beside those of the default recipe's run
   (``runs/bench-default``, made by ``train_xc_pr20.py``) when it exists.

    python benchmarks/train_kahl2018.py [--out runs/bench-kahl2018] [--set k=v ...] [--sort-split]

Shortened for 2 CPU cores: pass e.g. ``--set model.name=kahl2018_baseline`` (the baseline's
smaller CNN, ~15x faster to train here than its ResNet) and ``--set train.epochs=N``.
The run folder is resumable.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _common import REPO, machine, xc_pr20

METRICS = ("mlrap_bg", "mlrap", "mrr", "cmap", "top1", "top5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-kahl2018"))
    ap.add_argument("--set", action="append", default=[], help="override, e.g. train.epochs=10")
    ap.add_argument("--sort-split", action="store_true", help="validate on the sort's per-class split instead")
    ap.add_argument("--default-run", default=str(REPO / "runs" / "bench-default"))
    args = ap.parse_args()

    from birdnet_tf.config import load_config
    from birdnet_tf.data.sort import sort_dataset
    from birdnet_tf.train.trainer import train

    cache = Path(os.environ.get("BIRDNET_TF_CACHE") or Path.home() / ".cache" / "birdnet-tf")
    sorted_dir = cache / "bench" / "xc-pr20-sorted"
    if not (sorted_dir / "metadata.csv").is_file():
        sort_dataset(xc_pr20() / "xml", sorted_dir, mode="symlink", progress=False)
    overrides = [] if args.sort_split else ["data.split_by=recordist"]
    cfg = load_config(REPO / "pipelines" / "kahl2018_baseline.yaml", [*overrides, *args.set])
    print(f"machine: {machine()}")
    t = time.time()
    summary = train(cfg, sorted_dir, args.out)
    wall = time.time() - t
    out = Path(args.out)
    report = json.loads((out / "eval" / "report.json").read_text())
    state = json.loads((out / "state.json").read_text())
    print("\n=== train_kahl2018 ===")
    print(f"recipe: pipelines/kahl2018_baseline.yaml {' '.join(overrides + args.set)}")
    print(f"wall time this invocation: {wall / 60:.1f} min; training (all sessions): "
          f"{state.get('elapsed_s', 0) / 60:.1f} min; best epoch {summary['best_epoch']} of {summary['epochs']} "
          f"after {(summary.get('best_time_s') or 0) / 60:.1f} min")
    rows = [("kahl2018 baseline recipe", report)]
    default = Path(args.default_run) / "eval" / "report.json"
    if default.is_file():
        rows.append(("default recipe (runs/bench-default)", json.loads(default.read_text())))
    print(f"\n| model | files | pooling | {' | '.join(METRICS)} |")
    print("|---|---|---|" + "---|" * len(METRICS))
    for name, r in rows:
        print(f"| {name} | {r['n_files']} | {r['pooling']} | " + " | ".join(f"{r[k]:.3f}" for k in METRICS) + " |")
    other = {k: v for k, v in report.get("by_pooling", {}).items() if k != report["pooling"]}
    for pooling, r in other.items():
        print(f"  baseline recipe with {pooling} pooling: " + ", ".join(f"{k} {r[k]:.3f}" for k in METRICS))


if __name__ == "__main__":
    main()

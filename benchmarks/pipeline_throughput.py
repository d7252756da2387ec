"""Training-pipeline throughput: seconds of audio per wall second, birdnet-tf vs librosa.

Both sides do the same work on the same prepared 16-bit WAV files of xc-pr20: read,
take a random excerpt of ``data.excerpt_s``, and compute the log-mel spectrogram with
the default frontend settings (birdnet-tf also applies its waveform augmentations and
per-band standardisation). birdnet-tf: the tf.data training pipeline feeding the
model's frontend layers in batches. librosa: ``librosa.load(offset, duration)`` +
``librosa.feature.melspectrogram`` + log, per excerpt, in one process (how it is
usually run; NumPy may use both cores for the mel product).

    python benchmarks/pipeline_throughput.py [--files 60] [--excerpts 600]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _common import machine, xc_pr20


def librosa_excerpts(jobs, cfg) -> float:
    import librosa

    fe, sr = cfg.frontend, cfg.audio.sample_rate_hz
    total = 0.0
    for path, offset in jobs:
        y, _ = librosa.load(path, sr=None, offset=offset, duration=cfg.data.excerpt_s)
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=fe.n_fft, hop_length=fe.hop_length, n_mels=fe.n_mels,
                                             fmin=fe.fmin_hz, fmax=fe.fmax_hz, power=fe.power, htk=True, norm=None,
                                             center=False)
        np.log(mel + fe.log_offset)
        total += len(y) / sr
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=60, help="prepared files to draw excerpts from")
    ap.add_argument("--excerpts", type=int, default=640, help="excerpts per measurement")
    args = ap.parse_args()

    import tensorflow as tf

    from birdnet_tf.config import Config
    from birdnet_tf.data.dataset import prepared_catalog
    from birdnet_tf.data.pipeline import training_dataset
    from birdnet_tf.frontend import frontend_layers

    cfg = Config()
    catalog = prepared_catalog(xc_pr20(), cfg.audio.sample_rate_hz, progress=False, log=lambda m: None)
    catalog = catalog.sort_values("key").head(args.files)
    paths, durations = list(catalog["wav_path"]), catalog["duration_s"].to_numpy()
    print(f"machine: {machine()}")
    print(f"data: {len(paths)} prepared xc-pr20 files ({durations.sum() / 60:.1f} min), "
          f"{args.excerpts} excerpts of {cfg.data.excerpt_s} s at {cfg.audio.sample_rate_hz} Hz, "
          f"{cfg.frontend.n_mels} mels, n_fft {cfg.frontend.n_fft}, hop {cfg.frontend.hop_length}")

    # ---- birdnet-tf: tf.data (decode + excerpt + augment) → frontend layers (mel + log + band norm)
    targets = np.zeros((len(paths), 1), np.float32)
    ds = training_dataset(paths, targets, durations, cfg, training=True, repeat=True)
    layers = frontend_layers(cfg)

    @tf.function
    def frontend(x):
        for layer in layers:
            x = layer(x, training=True) if "norm" in layer.name else layer(x)
        return x

    batches = int(np.ceil(args.excerpts / cfg.data.batch_size))
    it = iter(ds)
    frontend(next(it)[0])  # trace + warm the pipeline
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, _ = next(it)
        frontend(x).numpy()
        n += int(x.shape[0])
    ours = n * cfg.data.excerpt_s / (time.perf_counter() - t)

    # ---- librosa, same files, same number of random excerpts
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(paths), n)
    jobs = [(paths[i], float(rng.uniform(0, max(durations[i] - cfg.data.excerpt_s, 0)))) for i in idx]
    librosa_excerpts(jobs[:4], cfg)  # import + warm-up
    t = time.perf_counter()
    audio = librosa_excerpts(jobs, cfg)
    lib1 = audio / (time.perf_counter() - t)
    print(f"{'pipeline':<44}{'audio s / wall s':>18}{'vs librosa':>22}")
    for name, v in [("birdnet-tf tf.data + in-model frontend", ours), ("librosa load+melspectrogram", lib1)]:
        print(f"{name:<44}{v:>18.0f}{v / lib1:>21.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

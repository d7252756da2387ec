"""Noise banks of the baseline's ``noise_chunk`` augmentation: noise-only chunks of the training files."""

from __future__ import annotations

import numpy as np

from birdnet_tf.config import Config
from birdnet_tf.errors import BirdnetError


def set_noise_bank(model, wav_paths: list[str], cfg: Config, log=print, max_chunks: int = 256) -> int:
    """Gives the baseline's ``noise_chunk`` augmentation its bank: noise-only chunks of the training files.

    The on-the-fly counterpart of extract's ``noise/`` set: chunk spectrograms of (a seeded
    sample of) the training recordings whose signal/noise score is below
    ``chunks.signal_threshold``. Returns how many were found (0 when the model has no such
    augmentation).
    """
    if "image_augment" not in {layer.name for layer in model.layers}:
        return 0
    layer = model.get_layer("image_augment")
    if "noise_chunk" not in layer.names:
        return 0
    from birdnet_tf.data.audio import load_audio
    from birdnet_tf.frontend.chunks import chunk_spectrogram, cut_chunks
    from birdnet_tf.frontend.signal_noise import signal_noise_score_tf

    bank: list[np.ndarray] = []
    for path in np.random.default_rng(cfg.data.seed).permutation(wav_paths):
        x, _ = load_audio(path, cfg.chunks.sample_rate_hz)
        _, chunks = cut_chunks(x, cfg.chunks)
        if len(chunks) == 0:
            continue
        images = chunk_spectrogram(chunks, cfg.chunks).numpy()
        bank += list(images[signal_noise_score_tf(images).numpy() < cfg.chunks.signal_threshold])
        if len(bank) >= max_chunks:
            break
    if not bank:
        log("warning: no noise-only chunks in the training files; the noise_chunk augmentation is left out")
        return 0
    layer.set_noise_bank(np.stack(bank[:max_chunks]))
    log(f"noise bank for noise_chunk: {min(len(bank), max_chunks)} noise-only chunks from the training files")
    return min(len(bank), max_chunks)


def set_chunk_noise_bank(model, png_paths: list[str], cfg: Config, log=print, max_chunks: int = 256) -> int:
    """Gives the ``noise_chunk`` augmentation of an image model its bank: up to ``max_chunks`` noise PNGs.

    The PNGs (extract's ``noise/`` chunks, a seeded sample) are read with
    :func:`~birdnet_tf.data.chunk_folder.read_chunk_png`; unreadable ones are skipped with a
    warning. Returns how many were set (0 when the model has no such augmentation).
    """
    if "image_augment" not in {layer.name for layer in model.layers}:
        return 0
    layer = model.get_layer("image_augment")
    if "noise_chunk" not in layer.names:
        return 0
    from birdnet_tf.data.chunk_folder import read_chunk_png

    bank, bad = [], 0
    shape = (cfg.chunks.width, cfg.chunks.height)
    for path in np.random.default_rng(cfg.data.seed).permutation(np.asarray(png_paths, dtype=str)):
        try:
            image = read_chunk_png(path)
        except BirdnetError:
            image = None
        if image is None or image.shape != shape:
            bad += 1
            continue
        bank.append(image)
        if len(bank) >= max_chunks:
            break
    if bad:
        log(f"warning: {bad} noise chunk PNG(s) unreadable or not {shape[0]}x{shape[1]}; left out of the noise bank")
    if not bank:
        log("warning: no noise chunks of the training files in the chunks folder; "
            "the noise_chunk augmentation is left out")
        return 0
    layer.set_noise_bank(np.stack(bank))
    log(f"noise bank for noise_chunk: {len(bank)} noise chunks (PNGs of the training files)")
    return len(bank)

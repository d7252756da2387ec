"""The frontend stack a config asks for (mel → magnitude → band centring → band standardisation,
or the baseline's chunk spectrogram), its checks, and the SpecAugment layer of a config."""

from __future__ import annotations

import keras

from birdnet_tf.config import AugmentConfig, Config, FrontendConfig
from birdnet_tf.errors import ConfigError
from birdnet_tf.frontend.layers import BandCentering, ChunkSpectrogram, MelSpectrogram, SpecAugment
from birdnet_tf.frontend.magnitudes import PCEN, MagnitudeScaling

__all__ = ["FILTERBANKS", "check_learnable_frontend", "frontend_layers", "spec_augment_layer"]

FILTERBANKS = ("mel", "mel_learn")


def frontend_layers(cfg: Config) -> list[keras.layers.Layer]:
    """The frontend stack for a config: mel → magnitude scaling → (band centring) → per-band standardisation.

    The mel layer is named ``mel`` (fixed or learnable filterbank), the magnitude layer
    ``magnitude`` whatever its kind (:class:`MagnitudeScaling` or :class:`PCEN`): whole-recording
    inference splits models there, and ``frontend.frontend_lr_scale`` finds the frontend's
    parameters by these names.
    """
    fe: FrontendConfig = cfg.frontend
    if fe.kind == "chunks":
        if cfg.audio.sample_rate_hz != cfg.chunks.sample_rate_hz:
            raise ConfigError(f"frontend.kind=chunks needs audio.sample_rate_hz = chunks.sample_rate_hz "
                              f"({cfg.audio.sample_rate_hz} != {cfg.chunks.sample_rate_hz})")
        if abs(cfg.data.excerpt_s - cfg.chunks.chunk_s) > 1e-6:
            raise ConfigError(f"frontend.kind=chunks needs data.excerpt_s = chunks.chunk_s "
                              f"({cfg.data.excerpt_s} != {cfg.chunks.chunk_s})")
        return [ChunkSpectrogram(cfg.chunks, name="chunk_spectrogram")]
    if fe.kind != "mel":
        raise ConfigError(f"frontend.kind must be mel or chunks, not '{fe.kind}'")
    check_learnable_frontend(fe)
    if fe.magnitude == "pcen":
        magnitude = PCEN(cfg.frames_per_second, name="magnitude")
    else:
        magnitude = MagnitudeScaling(fe.magnitude, fe.log_offset, name="magnitude")
    layers = [
        MelSpectrogram(cfg.audio.sample_rate_hz, fe.n_fft, fe.hop_length, fe.n_mels,
                       fe.fmin_hz, fe.fmax_hz, fe.power, learnable=fe.filterbank == "mel_learn",
                       stretch=fe.filterbank_stretch, name="mel"),
        magnitude,
    ]
    if fe.center_bands:
        layers.append(BandCentering(name="band_centering"))
    if fe.band_norm:
        # OFAI: batch normalisation without scale and shift = standardisation per band
        layers.append(keras.layers.BatchNormalization(axis=-1, center=False, scale=False,
                                                      dtype="float32", name="band_norm"))
    return layers


def check_learnable_frontend(fe: FrontendConfig) -> None:
    """Raises :class:`~birdnet_tf.errors.ConfigError` naming the first bad filterbank / magnitude setting."""
    kinds = (*MagnitudeScaling.KINDS, "pcen")
    if fe.filterbank not in FILTERBANKS:
        raise ConfigError(f"frontend.filterbank must be one of {', '.join(FILTERBANKS)}, not '{fe.filterbank}'")
    if fe.magnitude not in kinds:
        raise ConfigError(f"frontend.magnitude must be one of {', '.join(kinds)}, not '{fe.magnitude}'")
    if not 0.0 <= fe.filterbank_stretch < 1.0:
        raise ConfigError(f"frontend.filterbank_stretch must be in [0, 1), not {fe.filterbank_stretch}")
    if not fe.frontend_lr_scale > 0:
        raise ConfigError(f"frontend.frontend_lr_scale must be > 0, not {fe.frontend_lr_scale}")


def spec_augment_layer(aug: AugmentConfig) -> SpecAugment:
    return SpecAugment(aug.mask_prob, aug.freq_masks, aug.freq_mask_bins, aug.time_masks,
                       aug.time_mask_frames, name="spec_augment")


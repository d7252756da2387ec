"""Tests of the 2018 baseline's image augmentations (birdnet_tf.data.image_augment)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from birdnet_tf.data import image_augment as ia  # noqa: E402
from birdnet_tf.data.image_augment import ImageAugment, apply_augmentations  # noqa: E402
from birdnet_tf.errors import ConfigError  # noqa: E402

W, H = 40, 24  # width (time) × height (frequency)
NAMES = list(ia.DEFAULTS)


def images(batch: int = 6, seed: int = 0) -> np.ndarray:
    """Random images away from 0 and 1, so that every augmentation visibly changes them."""
    return np.random.default_rng(seed).uniform(0.05, 0.95, (batch, W, H)).astype(np.float32)


def bank(n: int = 3, seed: int = 1, shape=(W, H)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, *shape)).astype(np.float32)


def call(name, x, **kw):
    fn = getattr(ia, name)
    if name == "noise_chunk":
        kw.setdefault("noise_bank", bank())
    return fn(x, **kw)


# ----------------------------------------------------- single augmentations
@pytest.mark.parametrize("name", NAMES)
def test_identity_at_probability_zero_and_change_at_one(name):
    x = images()
    same, mask0 = call(name, x, seed=5, prob=0.0, return_mask=True)
    np.testing.assert_array_equal(same.numpy(), x)  # bit-for-bit
    assert not mask0.numpy().any()
    out, mask1 = call(name, x, seed=5, prob=1.0, return_mask=True)
    out = out.numpy()
    assert mask1.numpy().all()
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    for i in range(len(x)):  # every example changed
        assert not np.array_equal(out[i], x[i]), f"{name} left example {i} unchanged"


@pytest.mark.parametrize("name", NAMES)
def test_masked_examples_are_untouched_and_seed_is_deterministic(name):
    x = images(batch=16, seed=2)
    out, mask = call(name, x, seed=11, prob=0.5, return_mask=True)
    out, mask = out.numpy(), mask.numpy()
    assert 0 < mask.sum() < 16  # this seed picks some examples and leaves some
    np.testing.assert_array_equal(out[~mask], x[~mask])
    assert all(not np.array_equal(out[i], x[i]) for i in np.flatnonzero(mask))
    again = call(name, x, seed=11, prob=0.5).numpy()
    np.testing.assert_array_equal(again, out)
    seeded_tensor = call(name, x, seed=tf.constant([11, 0], tf.int64), prob=0.5).numpy()
    np.testing.assert_array_equal(seeded_tensor, out)


def test_vertical_roll_is_a_frequency_roll_within_15_percent():
    x = images(batch=8)
    out, mask = ia.vertical_roll(x, seed=3, prob=1.0, return_mask=True)
    limit = int(H * 0.15)
    for i in range(8):
        shifts = [k for k in range(-limit, limit + 1) if np.array_equal(np.roll(x[i], k, axis=1), out[i].numpy())]
        assert len(shifts) == 1 and shifts[0] != 0


def test_horizontal_roll_is_a_time_roll():
    x = images(batch=4)
    out = ia.horizontal_roll(x, seed=3, prob=1.0, max_fraction=0.25).numpy()
    for i in range(4):
        assert any(np.array_equal(np.roll(x[i], k, axis=0), out[i]) for k in range(-10, 11) if k)


def test_noise_chunk_blends_a_bank_chunk_like_the_baseline():
    x = images(batch=8)
    noise = bank(n=3)
    out = ia.noise_chunk(x, noise, seed=4, prob=1.0).numpy()
    used = set()
    for i in range(8):
        # out = (x·w1 + n·w2)/(w1+w2) = x + a·(n - x) with a = w2/(w1+w2) in [1/3, 2/3]
        fits = []
        for k in range(3):
            a = np.sum((out[i] - x[i]) * (noise[k] - x[i])) / np.sum((noise[k] - x[i]) ** 2)
            if np.allclose(out[i], x[i] + a * (noise[k] - x[i]), atol=1e-5):
                fits.append((k, a))
        assert len(fits) == 1, "the result is not a blend with exactly one bank chunk"
        k, a = fits[0]
        assert 1 / 3 - 1e-5 <= a <= 2 / 3 + 1e-5
        used.add(k)
    assert len(used) > 1  # chunks are drawn at random
    # a bank of another size is resized to the images'
    other = ia.noise_chunk(x, bank(n=2, shape=(W // 2, H * 2)), seed=4, prob=1.0)
    assert other.shape == x.shape
    with pytest.raises(ConfigError, match="noise bank"):
        apply_augmentations(x, ["add"], prob=1.0)


def test_blur_matches_opencv_box_blur():
    cv2 = pytest.importorskip("cv2")
    x = images(batch=2)
    out = ia.blur(x, seed=0, prob=1.0).numpy()
    for i in range(2):
        np.testing.assert_allclose(out[i], cv2.blur(x[i], (3, 3)), atol=1e-6)


def test_blackout_dropout_brightness_multiply_by_hand():
    x = images(batch=6)
    out = ia.blackout(x, seed=1, prob=1.0).numpy()
    span = int(W * 0.1)
    for i in range(6):
        zero_cols = np.flatnonzero((out[i] == 0).all(axis=1))
        assert len(zero_cols) == span and np.all(np.diff(zero_cols) == 1)
        keep = np.setdiff1d(np.arange(W), zero_cols)
        np.testing.assert_array_equal(out[i][keep], x[i][keep])
    out = ia.dropout(x, seed=1, prob=1.0).numpy()
    dropped = out == 0
    np.testing.assert_array_equal(out[~dropped], x[~dropped])
    assert 0.2 < dropped.mean() < 0.3
    out = ia.brightness(x, seed=1, prob=1.0).numpy()
    for i in range(6):
        ok = out[i] < 1.0  # not clipped
        factor = out[i][ok] / x[i][ok]
        np.testing.assert_allclose(factor, factor[0], rtol=1e-5)
        assert 0.85 - 1e-6 <= factor[0] <= 1.15 + 1e-6
    ratio = ia.multiply(x, seed=1, prob=1.0).numpy() / x
    inner = ratio[(ratio * x) < 1.0]
    assert inner.min() >= 0.75 - 1e-6 and inner.max() <= 1.25 + 1e-6 and inner.std() > 0.05


def test_geometric_augmentations_keep_a_flat_image_flat_inside():
    flat = np.full((3, W, H), 0.5, np.float32)
    for name in ("crop", "zoom"):
        np.testing.assert_allclose(getattr(ia, name)(flat, seed=2, prob=1.0).numpy(), 0.5, atol=1e-6)
    rot = ia.rotate(flat, seed=2, prob=1.0, max_degrees=20).numpy()
    np.testing.assert_allclose(rot[:, W // 2 - 3:W // 2 + 3, H // 2 - 3:H // 2 + 3], 0.5, atol=1e-6)
    assert (rot < 0.5).any()  # corners rotated in from outside are filled with 0


def test_single_image_and_bad_inputs():
    x = images(batch=1)[0]
    out, mask = ia.zoom(x, seed=1, prob=1.0, return_mask=True)
    assert out.shape == (W, H) and bool(mask)
    with pytest.raises(ValueError, match="width, height"):
        ia.zoom(np.zeros((2, 3, 4, 5), np.float32), prob=1.0)
    with pytest.raises(ValueError, match="probability"):
        ia.blur(x, prob=1.5)
    with pytest.raises(ConfigError, match="odd"):
        ia.blur(x, prob=1.0, kernel_size=4)


# ------------------------------------------------------------- composition
def test_apply_augmentations_respects_max_augs():
    x = images(batch=32)
    out, mask = apply_augmentations(x, NAMES, prob=1.0, max_augs=2, noise_bank=bank(), seed=9, return_mask=True)
    counts = mask.numpy().sum(axis=1)
    np.testing.assert_array_equal(counts, 2)  # prob 1: every try succeeds
    assert len({tuple(np.flatnonzero(m)) for m in mask.numpy()}) > 5  # different pairs per example
    out, mask = apply_augmentations(x, NAMES, prob=0.5, max_augs=3, noise_bank=bank(), seed=9, return_mask=True)
    counts = mask.numpy().sum(axis=1)
    assert counts.max() <= 3 and set(counts) > {0, 1}  # Binomial(3, 0.5)
    # examples that got nothing are untouched
    np.testing.assert_array_equal(out.numpy()[counts == 0], x[counts == 0])
    _, mask = apply_augmentations(x, ["roll_v", "blur"], prob=1.0, max_augs=5, seed=9, return_mask=True)
    np.testing.assert_array_equal(mask.numpy().sum(axis=1), 2)  # capped at the number enabled


def test_apply_augmentations_counts_what_changed():
    """With two augmentations enabled, the mask says which ones ran: check against applying them one by one."""
    x = images(batch=12)
    out, mask = apply_augmentations(x, ["blackout", "brightness"], prob=0.5, max_augs=1, seed=2,
                                    return_mask=True)
    out, mask = out.numpy(), mask.numpy()
    assert mask.sum(axis=1).max() == 1
    for i in range(12):
        changed = not np.array_equal(out[i], x[i])
        assert changed == bool(mask[i].any())
        if mask[i, 0]:  # blackout: some whole time frames are zero
            assert (out[i] == 0).all(axis=1).any()


def test_apply_augmentations_identity_at_probability_zero_and_deterministic():
    x = images()
    for kw in ({"prob": 0.0}, {"max_augs": 0}):
        out, mask = apply_augmentations(x, NAMES, noise_bank=bank(), seed=1, return_mask=True, **kw)
        np.testing.assert_array_equal(out.numpy(), x)
        assert not mask.numpy().any()
    a = apply_augmentations(x, NAMES, noise_bank=bank(), seed=1).numpy()
    b = apply_augmentations(x, NAMES, noise_bank=bank(), seed=1).numpy()
    c = apply_augmentations(x, NAMES, noise_bank=bank(), seed=2).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_names_params_and_aliases_are_checked():
    names, full = ia.resolve("roll_v, noise", {"roll_v": {"max_fraction": 0.1}})
    assert names == ["vertical_roll", "gaussian_noise"] and full["vertical_roll"]["max_fraction"] == 0.1
    with pytest.raises(ConfigError, match="unknown image augmentation 'wobble'"):
        ia.resolve(["wobble"])
    with pytest.raises(ConfigError, match="no parameter 'size'"):
        ia.resolve(["blur"], {"blur": {"size": 3}})
    with pytest.raises(ConfigError, match="not enabled"):
        ia.resolve(["blur"], {"zoom": {"amount": 0.1}})
    with pytest.raises(ConfigError, match="twice"):
        ia.resolve(["roll_v", "vertical_roll"])


# ---------------------------------------------------------- tf.data and Keras
def test_works_inside_tf_data_map():
    x = images(batch=8)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4).enumerate()
    names = ["roll_v", "noise_chunk", "rotate", "blackout"]
    ds = ds.map(lambda i, b: apply_augmentations(b, names, prob=1.0, noise_bank=bank(),
                                                 seed=tf.stack([tf.cast(i, tf.int32), 7])))
    first = np.concatenate([b.numpy() for b in ds])
    second = np.concatenate([b.numpy() for b in ds])
    np.testing.assert_array_equal(first, second)  # seeded per batch: repeatable
    assert first.shape == x.shape and first.dtype == np.float32
    assert all(not np.array_equal(first[i], x[i]) for i in range(8))
    # per example, unbatched, one augmentation function
    single = tf.data.Dataset.from_tensor_slices(x).map(lambda im: ia.vertical_roll(im, prob=1.0))
    assert all(s.shape == (W, H) for s in single)


def test_layer_in_a_model_trains_and_is_identity_in_inference(tmp_path):
    x = images(batch=8)
    inp = keras.Input((W, H))
    aug = ImageAugment(["roll_v", "noise_chunk", "blackout", "crop"], prob=1.0, max_augs=2, seed=3, name="aug")
    feats = aug(inp)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(feats))
    model = keras.Model(inp, out)
    aug.set_noise_bank(bank())
    np.testing.assert_array_equal(aug(x, training=False).numpy(), x)
    np.testing.assert_array_equal(model(x, training=False).numpy(), model(x).numpy())
    trained = aug(x, training=True).numpy()
    assert trained.shape == x.shape and all(not np.array_equal(trained[i], x[i]) for i in range(8))
    assert not np.array_equal(aug(x, training=True).numpy(), trained)  # the seed generator moves on
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, np.zeros((8, 2), np.float32), epochs=1, batch_size=4, verbose=0)  # graph mode
    # save/load: the config survives, the noise bank is not saved
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("aug")
    assert layer.get_config()["names"] == aug.get_config()["names"] and layer.noise_bank is None
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = layer(x, training=True).numpy()
    assert any("noise bank" in str(w.message) for w in caught)
    assert out.shape == x.shape


def test_layer_seed_repeats_and_config_round_trip():
    x = images(batch=4)
    a = ImageAugment("roll_h,multiply", prob=1.0, seed=7)
    b = ImageAugment.from_config(a.get_config())
    np.testing.assert_array_equal(a(x, training=True).numpy(), b(x, training=True).numpy())
    with pytest.raises(ValueError, match="N >= 1"):
        a.set_noise_bank(np.zeros((0, W, H)))
    with pytest.raises(ConfigError, match="probability"):
        ImageAugment(["blur"], prob=2.0)


def test_affine_resampling_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = images(batch=2)
    a = np.deg2rad(17.0)
    t_coef = np.array([[np.cos(a), np.sin(a), 3.0], [0.8, 0.0, 2.5]], np.float32)
    f_coef = np.array([[-np.sin(a), np.cos(a), 4.0], [0.0, 1.3, -1.2]], np.float32)
    out = ia._affine(tf.constant(x), tf.constant(t_coef), tf.constant(f_coef)).numpy()
    t, f = np.meshgrid(np.arange(W), np.arange(H), indexing="ij")
    for i in range(2):
        ts = t_coef[i, 0] * t + t_coef[i, 1] * f + t_coef[i, 2]
        fs = f_coef[i, 0] * t + f_coef[i, 1] * f + f_coef[i, 2]
        ref = ndimage.map_coordinates(x[i], [ts, fs], order=1, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out[i], ref, atol=1e-5)


def test_crop_cuts_one_cell_to_ten_percent_from_each_side():
    ramp = np.broadcast_to(np.arange(W, dtype=np.float32)[:, None] / W, (4, W, H)).copy()  # time ramp
    out = ia.crop(ramp, seed=3, prob=1.0).numpy()
    for i in range(4):
        col = out[i][:, H // 2]
        np.testing.assert_allclose(np.diff(col), np.diff(col)[0], atol=1e-5)  # still linear: resized back
        first, last = col[0] * W, col[-1] * W  # in cells of the original
        assert 1 - 1e-4 <= first <= 0.1 * W + 1e-4
        assert W - 1 - 0.1 * W - 1e-4 <= last <= W - 2 + 1e-4


def test_geometric_augmentations_compile_with_xla():
    """Keras turns XLA on for a GPU model whose layers all support it: the resampling must compile."""
    x = tf.constant(images(batch=4))
    fn = tf.function(lambda t, s: apply_augmentations(t, ["crop", "zoom", "rotate"], prob=1.0, max_augs=3,
                                                      seed=s), jit_compile=True)
    out = fn(x, tf.constant([1, 2])).numpy()
    assert out.shape == x.shape and np.all((out >= 0) & (out <= 1))

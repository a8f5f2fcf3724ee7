"""Transforms against hand-computed expectations; random ones reproducible by seed."""

import numpy as np
import pytest
from PIL import Image

from finetune.data import transforms as T


def _gradient_image(w=10, h=6):
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.arange(w)[None, :] * 20
    arr[..., 1] = np.arange(h)[:, None] * 40
    arr[..., 2] = 255
    return Image.fromarray(arr)


def test_to_tensor_and_normalize_values():
    img = _gradient_image()
    t = T.ToTensor()(img)
    assert t.shape == (3, 6, 10) and t.dtype.name == "float32"
    np.testing.assert_allclose(t.numpy()[0, 0, :3], [0, 20 / 255, 40 / 255], rtol=1e-6)
    n = T.Normalize()(t)
    expected = (np.asarray(img, dtype=np.float32) / 255 - T.IMAGENET_MEAN) / T.IMAGENET_STD
    np.testing.assert_allclose(n.numpy(), expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-6)


def test_resize_shorter_side_keeps_aspect():
    assert T.Resize(3)(_gradient_image(10, 6)).size == (5, 3)
    assert T.Resize(3)(_gradient_image(6, 10)).size == (3, 5)
    assert T.Resize((4, 7))(_gradient_image()).size == (7, 4)


def test_center_crop_box_matches_torchvision_rounding():
    img = _gradient_image(10, 6)
    out = np.asarray(T.CenterCrop((3, 5))(img))
    # top = round((6-3)/2) = 2 (banker's rounding of 1.5), left = round((10-5)/2) = 2
    np.testing.assert_array_equal(out, np.asarray(img)[2:5, 2:7])


def test_center_crop_pads_small_images():
    out = T.CenterCrop(8)(_gradient_image(4, 4))
    assert out.size == (8, 8)
    assert np.asarray(out)[0, 0].tolist() == [0, 0, 0]


def test_flip_is_exact_and_seeded():
    img = _gradient_image()
    flipped = T.RandomHorizontalFlip(p=1.0)(img)
    np.testing.assert_array_equal(np.asarray(flipped), np.asarray(img)[:, ::-1])
    assert T.RandomHorizontalFlip(p=0.0)(img) is img
    a = [T.RandomHorizontalFlip(seed=3).rng().random() for _ in range(1)]
    b = [T.RandomHorizontalFlip(seed=3).rng().random() for _ in range(1)]
    assert a == b


def test_random_resized_crop_size_and_reproducibility():
    img = _gradient_image(40, 30)
    outs1 = [np.asarray(t(img)) for t in [T.RandomResizedCrop(16, seed=7)] * 1 for _ in range(5)]
    crop = T.RandomResizedCrop(16, seed=7)
    outs2 = [np.asarray(crop(img)) for _ in range(5)]
    assert all(o.shape == (16, 16, 3) for o in outs2)
    for a, b in zip(outs1, outs2):
        np.testing.assert_array_equal(a, b)


def test_random_resized_crop_params_inside_image():
    crop = T.RandomResizedCrop(8, scale=(0.5, 1.0), seed=0)
    for _ in range(50):
        i, j, h, w = crop.get_params(40, 30)
        assert 0 <= i and 0 <= j and i + h <= 30 and j + w <= 40


@pytest.mark.parametrize(
    "pipeline, deterministic",
    [
        (T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor(), T.Normalize()]), True),
        (T.Compose([T.RandomResizedCrop(8), T.ToTensor()]), False),
        (T.imagenet_eval(), True),
        (T.imagenet_train(), False),
    ],
)
def test_deterministic_flag(pipeline, deterministic):
    assert pipeline.deterministic is deterministic

"""ImageFolder: layout, formats and modes, EXIF orientation, and every bad-file case."""

import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from finetune.data import DataLoader, DataWarning, ImageFolder, load_image
from finetune.data import transforms as T
from finetune.errors import DataError


def _save(path, mode="RGB", size=(8, 6), fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.arange(size[0] * size[1] * 4, dtype=np.uint8)
    if mode in ("RGB", "CMYK", "RGBA"):
        img = Image.new(mode, size, (10, 20, 30, 40)[: len(mode)])
    elif mode == "I;16":
        img = Image.fromarray(
            (np.arange(size[0] * size[1]).reshape(size[1], size[0]) * 1000).astype(np.uint16)
        )
    elif mode == "P":
        img = Image.new("P", size, 3)
        img.putpalette(list(range(256)) * 3)
    else:
        img = Image.new(mode, size, int(arr[0]))
    img.save(path, format=fmt, **kw)
    return path


@pytest.fixture
def folder(tmp_path):
    _save(tmp_path / "cat" / "a.jpg")
    _save(tmp_path / "cat" / "b.png", mode="L")
    _save(tmp_path / "dog" / "c.bmp")
    _save(tmp_path / "dog" / "d.gif", mode="P")
    _save(tmp_path / "dog" / "e.webp", mode="RGBA")
    _save(tmp_path / "bird" / "f.jpg", mode="CMYK")
    _save(tmp_path / "bird" / "g.png", mode="I;16")
    (tmp_path / "bird" / "notes.txt").write_text("not an image, ignored by extension")
    return tmp_path


def test_classes_sorted_and_indexed(folder):
    ds = ImageFolder(folder)
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.class_to_idx == {"bird": 0, "cat": 1, "dog": 2}
    assert len(ds) == 7
    assert sorted(set(ds.targets)) == [0, 1, 2]


def test_every_format_and_mode_decodes_to_rgb(folder):
    ds = ImageFolder(folder)
    for i in range(len(ds)):
        img, target = ds[i]
        assert img.mode == "RGB" and img.size == (8, 6)
        assert target == ds.samples[i][1]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    path = _save(tmp_path / "x.png", mode="I;16", size=(4, 4))
    arr = np.asarray(load_image(path))
    raw = (np.arange(16).reshape(4, 4) * 1000) / 257
    np.testing.assert_array_equal(arr[..., 0], np.round(raw).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (10, 4), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (4, 10)


def test_empty_root_and_empty_class_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolder(tmp_path)
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match="cat.*no image files"):
        ImageFolder(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing")


def _bomb_png(path, w=30000, h=30000):
    """A tiny PNG whose header claims w x h pixels."""

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "bomb"])
def test_bad_files_raise_naming_the_file(tmp_path, kind):
    good = _save(tmp_path / "cls" / "good.jpg", size=(64, 64))
    bad = tmp_path / "cls" / "bad.jpg" if kind != "bomb" else tmp_path / "cls" / "bad.png"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "truncated":
        bad.write_bytes(good.read_bytes()[:200])
    elif kind == "text":
        bad.write_text("this is not a jpeg")
    else:
        _bomb_png(bad)
    ds = ImageFolder(tmp_path)
    index = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(DataError, match="bad"):
        ds[index]


def test_skip_mode_drops_counts_and_reports(tmp_path):
    for i in range(3):
        _save(tmp_path / "cls" / f"ok{i}.png")
    (tmp_path / "cls" / "broken.jpg").write_text("junk")
    ds = ImageFolder(tmp_path, transform=T.ToTensor(), on_error="skip")
    loader = DataLoader(ds, batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    assert len(batches) == 1 and batches[0][0].shape[0] == 3
    assert ds.skipped == [str(tmp_path / "cls" / "broken.jpg")]
    assert any(
        issubclass(w.category, DataWarning) and "broken.jpg" in str(w.message) for w in caught
    )


def test_missing_image_is_named_as_missing(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "nowhere.jpg")

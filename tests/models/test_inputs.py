"""Inputs for the app and commands: shipped model names, image files, the default image."""
import numpy as np
import pytest

from nntrace.models import inputs
from nntrace.models.inputs import InputError, check_text, default_image, fit_to, load_image, resolve_model


def test_the_default_image_ships_pre_decoded(monkeypatch):
    """The first frame needs no data set: CIFAR-10 test image #0 ships as a 3 KB array."""
    monkeypatch.setattr("nntrace.models.data.load_cifar10", lambda *a, **k: pytest.fail("the data set was read"))
    img = default_image()
    assert img.pixels.shape == (1, 32, 32, 3) and img.pixels.dtype == np.float32
    assert img.description == "CIFAR-10 test image #0" and 0 <= img.label < 10
    assert img.pixels.std() > 10 and img.pixels.max() <= 255


def test_default_image_falls_back_to_the_photo_matplotlib_ships(monkeypatch, tmp_path):
    import nntrace.models.inputs as inputs
    monkeypatch.setattr(inputs, "DEFAULT_IMAGE", tmp_path / "missing.npz")
    monkeypatch.setattr("nntrace.models.data.find_cifar_zip", lambda path=None: None)
    img = default_image()
    assert img.pixels.shape == (1, 32, 32, 3) and img.pixels.dtype == np.float32
    assert img.description == "grace_hopper.jpg" and img.note.startswith("resized from")
    assert 0 <= img.pixels.min() and img.pixels.max() <= 255 and img.pixels.std() > 10


def test_images_are_fitted_to_the_model_with_a_note(tmp_path):
    from PIL import Image
    Image.fromarray(np.full((10, 20, 3), 77, np.uint8)).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png", size=(8, 6))
    assert img.pixels.shape == (1, 6, 8, 3) and img.note == "resized from 20×10 to 8×6"
    np.testing.assert_allclose(img.pixels, 77)
    same = fit_to(img, (8, 6))
    assert same is img


def test_shipped_names_and_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "PRETRAINED", tmp_path)
    with pytest.raises(FileNotFoundError, match="nntrace train lstm"):
        resolve_model("lstm")
    (tmp_path / "simple_rnn.npz").write_bytes(b"")
    assert resolve_model("rnn") == tmp_path / "simple_rnn.npz"
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(InputError, match=".keras or .npz"):
        resolve_model(tmp_path / "m.txt")
    with pytest.raises(InputError, match="empty"):
        check_text("  \n ")


# -- every image mode, converted so the model sees what a person sees -------------------------------
def saved(tmp_path, img, name):
    path = tmp_path / name
    img.save(path)
    return path


def test_16_bit_pngs_are_scaled_to_0_255_not_clipped_white(tmp_path):
    from PIL import Image
    values = np.array([[0, 16384, 32768, 65535]], np.uint16).repeat(4, 0)
    path = saved(tmp_path, Image.fromarray(values), "deep.png")
    with Image.open(path) as img:
        assert img.mode == "I;16"
    got = load_image(path, size=(4, 4))
    np.testing.assert_allclose(got.pixels[0, 0, :, 0], [0, 64, 128, 255])
    np.testing.assert_array_equal(got.pixels[..., 0], got.pixels[..., 2])  # gray: R = G = B
    assert got.note == "16-bit values scaled to 0–255"
    i_mode = saved(tmp_path, Image.fromarray(values.astype(np.int32)), "deep.tif")  # mode I
    np.testing.assert_allclose(load_image(i_mode, size=(4, 4)).pixels[0, 0, :, 0], [0, 64, 128, 255])
    too_wide = saved(tmp_path, Image.fromarray(np.full((4, 4), 70000, np.int32)), "wide.tif")
    with pytest.raises(InputError, match=r"wide\.tif.*values from 70000 to 70000.*0–65535"):
        load_image(too_wide)


@pytest.mark.parametrize("make,expected,note", [
    (lambda I: I.new("1", (4, 4), 1), (255, 255, 255), ""),
    (lambda I: I.new("L", (4, 4), 90), (90, 90, 90), ""),
    (lambda I: I.new("CMYK", (4, 4), (255, 0, 0, 0)), (0, 255, 255), ""),  # pure cyan
    (lambda I: I.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30), ""),
    (lambda I: I.new("RGBA", (4, 4), (0, 0, 0, 0)), (255, 255, 255), "transparent pixels shown on white"),
    (lambda I: I.new("LA", (4, 4), (0, 0)), (255, 255, 255), "transparent pixels shown on white"),
    (lambda I: I.fromarray(np.full((4, 4), 0.5, np.float32)), (128, 128, 128), "floating-point values 0–1"),
    (lambda I: I.fromarray(np.full((4, 4), 200.0, np.float32)), (200, 200, 200), ""),
])
def test_every_mode_converts_to_what_a_person_sees(tmp_path, make, expected, note):
    from PIL import Image
    img = make(Image)
    path = saved(tmp_path, img, "a.tif" if img.mode == "F" else "a.jpg" if img.mode == "CMYK" else "a.png")
    got = load_image(path, size=(4, 4))
    np.testing.assert_allclose(got.pixels[0, 1, 1], expected, atol=1)
    assert got.note.startswith(note)


def test_a_palette_image_with_a_transparent_colour(tmp_path):
    from PIL import Image
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 1)
    path = tmp_path / "p.png"
    img.save(path, transparency=0)  # red (index 0) is transparent
    got = load_image(path, size=(4, 4))
    np.testing.assert_allclose(got.pixels[0, 1, 1], [255, 255, 255])  # transparent red shows as white
    np.testing.assert_allclose(got.pixels[0, 0, 0], [0, 0, 255])
    assert "transparent pixels shown on white" in got.note


def bilevel_png(path, width: int, height: int):
    """A valid 1-bit PNG of any size, written row by row without holding the image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [20000, 10000])  # past Pillow's hard limit, and past its warning
def test_decompression_bombs_are_refused_naming_the_file_and_the_limit(tmp_path, side):
    path = bilevel_png(tmp_path / "bomb.png", side, side)
    assert path.stat().st_size < 200_000
    with pytest.raises(InputError, match=r"bomb\.png' is too large to read safely .* at most 89,478,485 pixels"):
        load_image(path)


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b""])
def test_garbage_and_truncated_images_are_one_clear_error(tmp_path, content):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"x\.png' is not a readable image"):
        load_image(path)


def test_a_png_cut_short_is_one_clear_error(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    path = saved(tmp_path, Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "whole.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(InputError, match=r"cut\.png' is not a readable image .*truncated"):
        load_image(cut)
    with pytest.raises(InputError, match="is a directory"):
        load_image(tmp_path)


def test_the_channel_count_follows_the_model(tmp_path):
    from PIL import Image
    from nntrace.models.inputs import image_format
    path = saved(tmp_path, Image.new("RGB", (8, 8), (255, 0, 0)), "red.png")
    gray = load_image(path, size=(8, 8), channels=1)
    assert gray.pixels.shape == (1, 8, 8, 1)
    np.testing.assert_allclose(gray.pixels, 76)  # Pillow's luma of pure red: 0.299 × 255
    assert load_image(path, size=(8, 8)).pixels.shape == (1, 8, 8, 3)
    rgb = inputs.ImageInput(np.full((1, 4, 4, 3), 200, np.float32), "a test image")
    assert fit_to(rgb, (8, 8), channels=1).pixels.shape == (1, 8, 8, 1)
    assert image_format([None, 28, 28, 1]) == ((28, 28), 1)
    assert image_format(None) == ((32, 32), 3)
    with pytest.raises(InputError, match="4 channels; nntrace gives a model 1 \\(grayscale\\) or 3 \\(RGB\\)"):
        image_format([None, 8, 8, 4])
    with pytest.raises(InputError, match=r"input of shape \(batch, 8\), not images"):
        image_format([None, 8])

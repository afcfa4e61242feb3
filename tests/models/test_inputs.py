"""Inputs for the app and commands: shipped model names, image files, the default image."""
import numpy as np
import pytest

from nntrace.models import inputs
from nntrace.models.inputs import InputError, check_text, default_image, fit_to, load_image, resolve_model


def test_default_image_falls_back_to_the_photo_matplotlib_ships(monkeypatch):
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

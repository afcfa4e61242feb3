"""Model and input resolution for the command line and the app: shipped names, image files, test images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nntrace.layers.errors import NNTraceError

PRETRAINED = Path(__file__).resolve().parent / "pretrained"
SHIPPED = {"cnn": "cnn", "rnn": "simple_rnn", "simple_rnn": "simple_rnn", "lstm": "lstm"}


class InputError(NNTraceError, ValueError):
    """An input the user gave that cannot be used (unreadable image, empty sentence...)."""


def resolve_model(spec: str | Path) -> Path:
    """A shipped name (cnn, rnn, lstm) → its `.npz`; otherwise a path that must exist."""
    if str(spec) in SHIPPED:
        path = PRETRAINED / f"{SHIPPED[str(spec)]}.npz"
        if not path.exists():
            raise FileNotFoundError(f"the shipped {spec} model is missing ({path}); train it with "
                                    f"`nntrace train {spec if spec != 'simple_rnn' else 'rnn'} --out {PRETRAINED}`")
        return path
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"no model file at '{path}' (expected a .keras or .npz file, or cnn / rnn / lstm)")
    if path.suffix not in (".keras", ".npz"):
        raise InputError(f"'{path}': expected a .keras or .npz model file")
    return path


def keras_path_for(model_path: Path) -> Path | None:
    """The `.keras` file beside a scratch `.npz` (or the path itself)."""
    candidate = model_path if model_path.suffix == ".keras" else model_path.with_suffix(".keras")
    return candidate if candidate.exists() else None


@dataclass
class ImageInput:
    pixels: np.ndarray   # (1, 32, 32, 3) float32, raw 0–255
    description: str
    label: int | None = None
    note: str = ""       # e.g. "resized from 640×480"


def fit_to(img: ImageInput, size: tuple[int, int]) -> ImageInput:
    """Resize (with a visible note) when the model takes another size; `size` is (width, height)."""
    from PIL import Image

    h, w = img.pixels.shape[1:3]
    if (w, h) == tuple(size):
        return img
    pil = Image.fromarray(img.pixels[0].astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    note = f"resized from {w}×{h} to {size[0]}×{size[1]}"
    return ImageInput(np.asarray(pil, np.float32)[None], img.description, img.label, note)


def load_image(path: str | Path, size: tuple[int, int] = (32, 32)) -> ImageInput:
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no image file at '{path}'")
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"'{path}' is not a readable image (PNG or JPEG): {exc}") from exc
    return fit_to(ImageInput(np.asarray(rgb, np.float32)[None], path.name), size)


def cifar_test_image(index: int, data_dir=None) -> ImageInput:
    from nntrace.models.data import load_cifar10

    data = load_cifar10(data_dir)
    if not 0 <= index < len(data.y_test):
        raise InputError(f"--index must be between 0 and {len(data.y_test) - 1}, got {index}")
    return ImageInput(data.x_test[index:index + 1].astype(np.float32), f"CIFAR-10 test image #{index}",
                      int(data.y_test[index]))


def default_image(data_dir=None) -> ImageInput:
    """A CIFAR-10 test image when a copy is found, else the photo that ships with matplotlib."""
    from nntrace.models.data import DataNotFoundError, find_cifar_zip

    if find_cifar_zip(data_dir) is not None:
        try:
            return cifar_test_image(0, data_dir)
        except DataNotFoundError:
            pass
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return load_image(photo)


def check_text(text: str) -> str:
    if not text or not text.strip():
        raise InputError("the sentence is empty: type a few words")
    return text

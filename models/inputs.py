"""Model and input resolution for the command line and the app: shipped names, image files, test images."""
from __future__ import annotations

import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nntrace.layers.errors import NNTraceError

PRETRAINED = Path(__file__).resolve().parent / "pretrained"
SHIPPED = {"cnn": "cnn", "rnn": "simple_rnn", "simple_rnn": "simple_rnn", "lstm": "lstm", "gru": "gru",
           "attention": "attention"}


class InputError(NNTraceError, ValueError):
    """An input the user gave that cannot be used (unreadable image, empty sentence...)."""


def resolve_model(spec: str | Path) -> Path:
    """A shipped name (cnn, rnn, lstm, gru, attention) → its `.npz`; otherwise a path that must exist."""
    if str(spec) in SHIPPED:
        path = PRETRAINED / f"{SHIPPED[str(spec)]}.npz"
        if not path.exists():
            raise FileNotFoundError(f"the shipped {spec} model is missing ({path}); train it with "
                                    f"`nntrace train {spec if spec != 'simple_rnn' else 'rnn'} --out {PRETRAINED}`")
        return path
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"no model file at '{path}' (expected a .keras or .npz file, or cnn / rnn / lstm / gru / attention)")
    if path.suffix not in (".keras", ".npz"):
        raise InputError(f"'{path}': expected a .keras or .npz model file")
    if not path.is_file():
        raise InputError(f"'{path}' is a directory: expected a .keras or .npz model file")
    return path


def keras_path_for(model_path: Path) -> Path | None:
    """The `.keras` file beside a scratch `.npz` (or the path itself)."""
    candidate = model_path if model_path.suffix == ".keras" else model_path.with_suffix(".keras")
    return candidate if candidate.exists() else None


@dataclass
class ImageInput:
    pixels: np.ndarray   # (1, height, width, channels) float32, raw 0–255; 3 channels (RGB) or 1 (grayscale)
    description: str
    label: int | None = None
    note: str = ""       # e.g. "resized from 640×480"


#: The largest image read, in pixels: Pillow's own guard against decompression bombs (≈ 9459 × 9459).
MAX_PIXELS = 89_478_485
#: Modes whose values are 16-bit (or wider) integers; 16-bit PNGs open as one of these.
WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: What a failing decoder raises on a damaged or truncated file.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


def image_format(shape: list | None) -> tuple[tuple[int, int], int]:
    """`(width, height)` and channel count an image model takes, from its input shape
    `(batch, height, width, channels)`; InputError for a model that takes no images nntrace can give."""
    shape = list(shape) if shape else [None, 32, 32, 3]
    if len(shape) != 4:
        dims = ", ".join("batch" if i == 0 else str(d) for i, d in enumerate(shape))
        raise InputError(f"this model takes input of shape ({dims}), not images (batch, height, width, channels): "
                         "nntrace can feed it neither an image nor a sentence")
    channels = shape[3] or 3
    if channels not in (1, 3):
        raise InputError(f"this model takes images with {channels} channels; nntrace gives a model 1 (grayscale) "
                         "or 3 (RGB)")
    return (shape[2] or 32, shape[1] or 32), channels


def with_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """`(1, h, w, 3)` RGB or `(1, h, w, 1)` grayscale pixels in the channel count asked for
    (grayscale by ITU-R 601-2 luma, as Pillow converts)."""
    from PIL import Image

    if pixels.shape[-1] == channels:
        return pixels
    mode = "L" if channels == 1 else "RGB"
    img = Image.fromarray(pixels[0].astype(np.uint8).squeeze(-1) if pixels.shape[-1] == 1
                          else pixels[0].astype(np.uint8))
    return np.asarray(img.convert(mode), np.float32).reshape(1, *pixels.shape[1:3], channels)


def fit_to(img: ImageInput, size: tuple[int, int], channels: int | None = None) -> ImageInput:
    """Resize (with a visible note) when the model takes another size; `size` is (width, height).
    With `channels`, the pixels become RGB (3) or grayscale (1)."""
    from PIL import Image

    pixels = img.pixels if channels is None else with_channels(img.pixels, channels)
    h, w, c = pixels.shape[1:4]
    if (w, h) == tuple(size):
        return img if pixels is img.pixels else ImageInput(pixels, img.description, img.label, img.note)
    plane = pixels[0].astype(np.uint8)
    pil = Image.fromarray(plane.squeeze(-1) if c == 1 else plane).resize(size, Image.Resampling.BILINEAR)
    note = "; ".join(filter(None, [img.note, f"resized from {w}×{h} to {size[0]}×{size[1]}"]))
    return ImageInput(np.asarray(pil, np.float32).reshape(1, size[1], size[0], c), img.description, img.label, note)


def to_8bit(img, path: Path):
    """An 8-bit L or RGB(A) Pillow image that looks like `img`, and a note when values were rescaled."""
    from PIL import Image

    if img.mode in WIDE_INT_MODES:
        values = np.asarray(img).astype(np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(f"'{path}' holds {img.mode} values from {values.min():.0f} to {values.max():.0f}; "
                             "nntrace reads 8-bit images and 16-bit ones (values 0–65535)")
        return Image.fromarray(np.round(values * (255 / 65535)).astype(np.uint8), "L"), \
            "16-bit values scaled to 0–255"
    if img.mode == "F":
        values = np.asarray(img).astype(np.float64)
        if not np.isfinite(values).all() or (values.size and (values.min() < 0 or values.max() > 255)):
            raise InputError(f"'{path}' holds floating-point values outside 0–255 (or NaN); nntrace reads "
                             "floating-point images with values 0–1 or 0–255")
        if values.size and values.max() <= 1:
            return Image.fromarray(np.round(values * 255).astype(np.uint8), "L"), \
                "floating-point values 0–1 scaled to 0–255"
        return Image.fromarray(np.round(values).astype(np.uint8), "L"), ""
    return img, ""


def flatten_alpha(img):
    """RGB or L with transparent pixels shown on white (as a browser shows them), and a note."""
    from PIL import Image

    transparent = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if not transparent:
        return img, ""
    rgba = img.convert("RGBA")
    if rgba.getextrema()[3][0] == 255:
        return rgba.convert("RGB"), ""
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB"), "transparent pixels shown on white"


def image_pixels(img, path: Path, channels: int) -> tuple[np.ndarray, str]:
    """`(1, h, w, channels)` float32 pixels 0–255 of an open Pillow image, and a note on conversions."""
    img.load()
    img, scaled = to_8bit(img, path)
    img, flattened = flatten_alpha(img)
    try:
        base = img if img.mode in ("L", "RGB") else img.convert("RGB")
        converted = base.convert("L" if channels == 1 else "RGB")
    except ValueError as exc:
        raise InputError(f"'{path}' is a {img.mode} image, which nntrace cannot convert to "
                         f"{'grayscale' if channels == 1 else 'RGB'} ({exc})") from exc
    pixels = np.asarray(converted, np.float32).reshape(1, converted.height, converted.width, channels)
    return pixels, "; ".join(filter(None, [scaled, flattened]))


def load_image(path: str | Path, size: tuple[int, int] = (32, 32), channels: int = 3) -> ImageInput:
    """An image file as `(1, height, width, channels)` pixels 0–255, resized to `size` (width, height);
    InputError naming the file when it is not a readable image or is too large to read safely."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no image file at '{path}'")
    if not path.is_file():
        raise InputError(f"'{path}' is a directory, not an image file (PNG or JPEG)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise too_large(path, f"{w}×{h} = {w * h:,} pixels")
                pixels, note = image_pixels(img, path, channels)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise too_large(path, str(exc).split(",")[0]) from exc
        except UnidentifiedImageError as exc:
            raise InputError(f"'{path}' is not a readable image (PNG or JPEG): {exc}") from exc
        except InputError:
            raise
        except DECODE_ERRORS as exc:
            raise InputError(f"'{path}' is not a readable image (PNG or JPEG; damaged or truncated?): "
                             f"{exc}") from exc
    return fit_to(ImageInput(pixels, path.name, note=note), size)


def too_large(path: Path, size: str) -> InputError:
    return InputError(f"'{path}' is too large to read safely ({size}); nntrace reads images of at most "
                      f"{MAX_PIXELS:,} pixels: resize it first")


def cifar_test_image(index: int, data_dir=None) -> ImageInput:
    from nntrace.models.data import load_cifar10

    data = load_cifar10(data_dir)
    if not 0 <= index < len(data.y_test):
        raise InputError(f"--index must be between 0 and {len(data.y_test) - 1} (the CIFAR-10 test set has "
                         f"{len(data.y_test):,} images), got {index}")
    return ImageInput(data.x_test[index:index + 1].astype(np.float32), f"CIFAR-10 test image #{index}",
                      int(data.y_test[index]))


#: CIFAR-10 test image #0, pre-decoded (3 KB), so the app's first frame needs no data set.
DEFAULT_IMAGE = PRETRAINED / "default-image.npz"


def default_image(data_dir=None) -> ImageInput:
    """CIFAR-10 test image #0 (shipped pre-decoded); without it, from a CIFAR-10 copy when one is
    found, else the photo that ships with matplotlib."""
    from nntrace.models.data import DataNotFoundError, find_cifar_zip

    if DEFAULT_IMAGE.is_file():
        with np.load(DEFAULT_IMAGE, allow_pickle=False) as shipped:
            return ImageInput(shipped["pixels"][None].astype(np.float32), "CIFAR-10 test image #0",
                              int(shipped["label"]))

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

"""Datasets: CIFAR-10 (40,000 / 10,000 / 10,000 split) and NusaX-Senti Indonesian.

Where data is looked for, in order: an explicit path, `$NNTRACE_DATA` (a directory laid out like
`shared/data`: `cifar10-jpeg.zip`, `nusax-senti-ind/`), a `shared/data` directory beside the project
or the working directory, then the usual online sources (keras.datasets for CIFAR-10, the NusaX
upstream CSVs). Decoded CIFAR-10 is cached as `.npz` in the user's cache directory.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nntrace.layers.errors import NNTraceError
from nntrace.models.convert import ZIP_ERRORS

CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
NUSAX_LABELS = ["negative", "neutral", "positive"]
NUSAX_URL = "https://raw.githubusercontent.com/IndoNLP/nusax/main/datasets/sentiment/indonesian/{split}.csv"
CIFAR_ZIP = "cifar10-jpeg.zip"
NUSAX_DIR = "nusax-senti-ind"
SPLIT_SEED = 1234  # fixed: the 40,000 / 10,000 train/validation split never changes
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class DataNotFoundError(NNTraceError, FileNotFoundError):
    """No copy of a dataset was found; the message lists every place that was tried."""


class DataFormatError(DataNotFoundError):
    """A dataset file that is there but cannot be used (damaged, or laid out otherwise); the message
    names the file and what was expected."""


@dataclass
class Splits:
    """Train/validation/test arrays plus class names in output order."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]

    def subset(self, n_train: int, n_eval: int, seed: int = 0) -> "Splits":
        """A small random subset of each split (for quick runs and tests)."""
        rng = np.random.default_rng(seed)

        def pick(x, y, n):
            idx = np.sort(rng.permutation(len(y))[:n])
            return x[idx], y[idx]

        return Splits(*pick(self.x_train, self.y_train, n_train), *pick(self.x_val, self.y_val, n_eval),
                      *pick(self.x_test, self.y_test, n_eval), self.labels)


def candidate_roots(path: str | Path | None = None) -> list[Path]:
    """Data directories to try, in order."""
    roots = []
    if path is not None:
        roots.append(Path(path))
    if os.environ.get("NNTRACE_DATA"):
        roots.append(Path(os.environ["NNTRACE_DATA"]))
    for base in (PROJECT_ROOT, Path.cwd()):
        for rel in ("../shared/data", "shared/data"):
            p = (base / rel).resolve()
            if p not in roots:
                roots.append(p)
    return roots


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    d = Path(os.environ.get("NNTRACE_CACHE", user_cache_dir("nntrace")))
    d.mkdir(parents=True, exist_ok=True)
    return d


# -- CIFAR-10 ----------------------------------------------------------------------------------
def find_cifar_zip(path: str | Path | None = None) -> Path | None:
    for root in candidate_roots(path):
        for p in (root, root / CIFAR_ZIP):
            if p.is_file() and p.suffix == ".zip":
                return p
    return None


def decode_cifar_zip(zip_path: Path) -> dict[str, np.ndarray]:
    """`cifar10/{train,test}/<class>/NNNN.jpg` → uint8 arrays `(n, 32, 32, 3)` and label ids."""
    from PIL import Image

    out: dict[str, list] = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    name = ""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = sorted(n for n in zf.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png")))
            for name in names:
                parts = name.split("/")
                if len(parts) < 3 or parts[-3] not in ("train", "test") or parts[-2] not in CIFAR10_LABELS:
                    continue
                split, label = parts[-3], parts[-2]
                with Image.open(io.BytesIO(zf.read(name))) as img:
                    pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
                if pixels.shape != (32, 32, 3):
                    raise DataFormatError(f"'{zip_path}': image '{name}' is {pixels.shape[1]}×{pixels.shape[0]}; "
                                          "CIFAR-10 images are 32×32")
                out[f"x_{split}"].append(pixels)
                out[f"y_{split}"].append(CIFAR10_LABELS.index(label))
    except DataFormatError:
        raise
    except (*ZIP_ERRORS, SyntaxError) as exc:
        where = f" at '{name}'" if name else ""
        raise DataFormatError(f"'{zip_path}' cannot be read{where} (damaged or not a zip of images): {exc}") from exc
    if not out["x_train"] or not out["x_test"]:
        raise DataNotFoundError(f"'{zip_path}' holds no cifar10/{{train,test}}/<class>/*.jpg images")
    return {k: np.stack(v) if k.startswith("x") else np.array(v, np.int64) for k, v in out.items()}


def valid_cifar_arrays(arrays: dict[str, np.ndarray]) -> bool:
    """Whether cached arrays are what `decode_cifar_zip` returns."""
    try:
        xs, ys = (arrays["x_train"], arrays["x_test"]), (arrays["y_train"], arrays["y_test"])
    except KeyError:
        return False
    return all(x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (32, 32, 3) and len(x) > 0 for x in xs) and \
        all(y.dtype.kind in "iu" and y.ndim == 1 and len(y) == len(x) and (y.size == 0 or 0 <= y.min() <= y.max() < 10)
            for x, y in zip(xs, ys))


def read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The decoded arrays cached at `path`, or None when the cache is missing or damaged."""
    if not path.is_file():
        return None
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            return None
        with data:
            arrays = {k: data[k] for k in data.files}
    except ZIP_ERRORS:
        return None
    return arrays if valid_cifar_arrays(arrays) else None


def write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the cache through a temporary file of this process, so readers never see half of it."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a cache that cannot be written is only slower next time


def cifar_arrays(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """The 50,000 training and 10,000 test images, decoded once and cached."""
    zip_path = find_cifar_zip(path)
    if zip_path is not None:
        stat = zip_path.stat()
        key = hashlib.sha1(f"{zip_path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
        cached = cache_dir() / f"cifar10-{key}.npz"
        arrays = read_cache(cached)
        if arrays is None:
            arrays = decode_cifar_zip(zip_path)
            write_cache(cached, arrays)
        return arrays
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # offline, no cache
        tried = ", ".join(str(r) for r in candidate_roots(path))
        raise DataNotFoundError(
            f"CIFAR-10 not found: looked for {CIFAR_ZIP} in {tried}, then keras.datasets.cifar10 ({exc}). "
            "Set NNTRACE_DATA or pass --data DIR.") from exc
    return {"x_train": x_train, "y_train": y_train.ravel().astype(np.int64),
            "x_test": x_test, "y_test": y_test.ravel().astype(np.int64)}


def load_cifar10(path: str | Path | None = None) -> Splits:
    """CIFAR-10 as uint8 images `(n, 32, 32, 3)`: 40,000 train / 10,000 validation / 10,000 test."""
    a = cifar_arrays(path)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(a["y_train"]))
    n_val = len(order) // 5
    val, train = order[:n_val], order[n_val:]
    return Splits(a["x_train"][train], a["y_train"][train], a["x_train"][val], a["y_train"][val],
                  a["x_test"], a["y_test"], list(CIFAR10_LABELS))


# -- NusaX-Senti -------------------------------------------------------------------------------
def read_nusax_csv(text: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise DataFormatError(f"'{source}' is not a readable CSV file: {exc}") from exc
    if not rows or not {"text", "label"} <= rows[0].keys():
        raise DataFormatError(f"'{source}' is not a NusaX CSV (needs 'text' and 'label' columns)")
    short = next((i for i, r in enumerate(rows, 2) if r["text"] is None or r["label"] is None), None)
    if short is not None:
        raise DataFormatError(f"'{source}', line {short}: the row has no 'text' or 'label' value")
    unknown = {r["label"] for r in rows} - set(NUSAX_LABELS)
    if unknown:
        raise DataFormatError(f"'{source}' has unknown labels {sorted(unknown)}; expected {NUSAX_LABELS}")
    texts = np.array([r["text"] for r in rows], dtype=np.str_)
    labels = np.array([NUSAX_LABELS.index(r["label"]) for r in rows], np.int64)
    return texts, labels


def read_text(path: Path) -> str:
    """A UTF-8 text file; DataFormatError when it is not one."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"'{path}' is not UTF-8 text: {exc}") from exc


def nusax_sources(path: str | Path | None = None) -> Path | None:
    for root in candidate_roots(path):
        for d in (root, root / NUSAX_DIR):
            if all((d / f"{s}.csv").is_file() for s in ("train", "valid", "test")):
                return d
    return None


def load_nusax(path: str | Path | None = None) -> Splits:
    """NusaX-Senti Indonesian: texts (str arrays) and label ids for train (500), valid (100), test (400)."""
    d = nusax_sources(path)
    parts = []
    for split in ("train", "valid", "test"):
        if d is not None:
            parts += read_nusax_csv(read_text(d / f"{split}.csv"), str(d / f"{split}.csv"))
            continue
        cached = cache_dir() / NUSAX_DIR / f"{split}.csv"
        if not cached.exists():
            url = NUSAX_URL.format(split=split)
            try:
                with urllib.request.urlopen(url, timeout=30) as resp:
                    body = resp.read().decode("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                tried = ", ".join(str(r) for r in candidate_roots(path))
                raise DataNotFoundError(
                    f"NusaX-Senti not found: looked for {NUSAX_DIR}/{{train,valid,test}}.csv in {tried}, "
                    f"then {url} ({exc}). Set NNTRACE_DATA or pass --data DIR.") from exc
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(body, encoding="utf-8")
        parts += read_nusax_csv(read_text(cached), str(cached))
    return Splits(*parts, list(NUSAX_LABELS))

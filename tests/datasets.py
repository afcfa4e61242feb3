"""Tiny synthetic datasets laid out like shared/data, for tests that must not depend on real data."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from nntrace.models.data import CIFAR10_LABELS, NUSAX_LABELS

WORDS = {"negative": ["buruk", "kotor", "mahal", "lambat"], "neutral": ["biasa", "cukup", "ada", "saja"],
         "positive": ["enak", "bagus", "murah", "ramah"]}


def make_cifar_zip(root: Path, per_class: tuple[int, int] = (5, 2)) -> Path:
    """`cifar10-jpeg.zip` layout; each class has its own colour so a model can learn it."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(root / "cifar10-jpeg.zip", "w") as zf:
        for split, n in zip(("train", "test"), per_class):
            for c, label in enumerate(CIFAR10_LABELS):
                for i in range(n):
                    img = np.clip(rng.normal(c * 25, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, "PNG")
                    zf.writestr(f"cifar10/{split}/{label}/{i:04d}.png", buf.getvalue())
    return root


def make_nusax(root: Path, sizes=(("train", 30), ("valid", 9), ("test", 9))) -> Path:
    """`nusax-senti-ind/{train,valid,test}.csv` with a few sentiment words per label."""
    d = root / "nusax-senti-ind"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for split, n in sizes:
        rows = ["id,text,label"]
        for i in range(n):
            label = NUSAX_LABELS[i % 3]
            words = " ".join(rng.choice(WORDS[label], 3))
            rows.append(f'{i},"Tempat ini {words}, sekali",{label}')
        (d / f"{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root

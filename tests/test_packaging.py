"""One import package: nntrace installs as `nntrace.*` and never imports a bare `models`, `layers`…"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BARE = ("cli", "tui", "models", "layers", "tracer", "views", "lessons")

IMPORT_ALL = """
import importlib, pkgutil, sys
import nntrace
names = ["nntrace", "nntrace.cli", "nntrace.tui", "nntrace.__main__"]
for sub in ("layers", "models", "tracer", "views", "lessons"):
    package = importlib.import_module("nntrace." + sub)
    names += [f"nntrace.{sub}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
for name in names:
    if name != "nntrace.__main__":
        importlib.import_module(name)
from nntrace import load_scratch, CNNFromScratch, RNNFromScratch, LSTMFromScratch, trace
bare = sorted(m for m in sys.modules if m.split(".")[0] in {bare!r})
print(len(names), "modules;", "bare:", ",".join(bare) or "none")
"""


def test_no_module_imports_a_bare_top_level_name(tmp_path):
    """From a student's folder with its own `models.py` (and friends), nntrace still imports itself."""
    for name in BARE:
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('decoy {name}.py was imported')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL.replace("{bare!r}", repr(set(BARE)))],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    count, _, bare = out.stdout.strip().rpartition("bare: ")
    assert int(count.split()[0]) > 30  # every module of every subpackage was imported
    assert bare == "none"


def test_command_runs_from_a_folder_with_a_decoy_models_py(tmp_path):
    (tmp_path / "models.py").write_text("raise SystemExit('decoy models.py was imported')\n")
    nntrace = Path(sys.executable).with_name("nntrace")
    out = subprocess.run([str(nntrace), "lessons"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NNTRACE_STATE": str(tmp_path / "state")})
    assert out.returncode == 0, out.stderr
    assert "decoy" not in out.stdout + out.stderr and "17" in out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source") / "nntrace"  # a copy, so the build leaves no build/ in the tree
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                                 ".pytest_cache", ".hypothesis", "runs"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = list(out.glob("nntrace-*.whl"))
    assert len(wheels) == 1
    return wheels[0], build.stdout + build.stderr


def test_wheel_holds_only_the_nntrace_package(wheel):
    path, log = wheel
    names = zipfile.ZipFile(path).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"nntrace", path.name.split("-")[0] + "-" + path.name.split("-")[1] + ".dist-info"}
    for kind in ("cnn", "simple_rnn", "lstm", "gru", "attention"):
        for ext in ("keras", "npz", "json"):
            assert f"nntrace/models/pretrained/{kind}.{ext}" in names
    lessons = [n for n in names if n.startswith("nntrace/lessons/") and n.endswith(".toml")]
    assert len(lessons) >= 17
    assert "nntrace/reports/experiments.json" in names
    for module in ("nntrace/__init__.py", "nntrace/cli.py", "nntrace/tui.py", "nntrace/layers/conv.py",
                   "nntrace/views/render.py", "nntrace/tracer/io.py", "nntrace/lessons/runner.py"):
        assert module in names
    assert not any(n.startswith(("nntrace/tests/", "nntrace/bench/")) for n in names)
    entry = zipfile.ZipFile(path).read(path.name.rsplit("-", 3)[0] + ".dist-info/entry_points.txt").decode()
    assert "nntrace = nntrace.cli:main" in entry
    assert "would be ignored" not in log


def test_wheel_installs_and_loads_the_shipped_model_outside_the_checkout(wheel, tmp_path):
    """Unpacked alone on sys.path (no checkout), the package finds its own data files."""
    path, _ = wheel
    site = tmp_path / "site"
    zipfile.ZipFile(path).extractall(site)
    (tmp_path / "models.py").write_text("raise SystemExit('decoy models.py was imported')\n")
    code = ("import nntrace, sys; from nntrace import load_scratch; from nntrace.models.inputs import PRETRAINED; "
            "from nntrace.lessons.runner import load_lessons; "
            "m = load_scratch(PRETRAINED / 'cnn.npz'); [load_scratch(PRETRAINED / f'{k}.npz') for k in ('gru', 'attention')]; "
            "print(nntrace.__file__); print(len(load_lessons()), m.name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    where, summary = out.stdout.strip().splitlines()[-2:]
    assert where.startswith(str(site))
    assert int(summary.split()[0]) >= 17

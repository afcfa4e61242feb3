"""Fixtures shared by the training tests."""
import pytest

from tests.datasets import make_cifar_zip, make_nusax


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A tiny NusaX and CIFAR-10 laid out like shared/data, with the CIFAR cache kept in tmp_path."""
    monkeypatch.setenv("NNTRACE_CACHE", str(tmp_path / "cache"))
    make_nusax(tmp_path / "data")
    return make_cifar_zip(tmp_path / "data", per_class=(4, 2))

"""Data loading from an explicit path, $NNTRACE_DATA, and the clear error when nothing is found."""
import numpy as np
import pytest

from nntrace.models import data
from nntrace.models.data import CIFAR10_LABELS, DataNotFoundError, load_cifar10, load_nusax
from tests.datasets import make_cifar_zip, make_nusax


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("NNTRACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NNTRACE_DATA", raising=False)
    monkeypatch.setattr(data, "PROJECT_ROOT", tmp_path / "nowhere" / "project")
    monkeypatch.chdir(tmp_path)


def test_cifar_from_env_dir_with_fixed_split(tmp_path, monkeypatch):
    make_cifar_zip(tmp_path / "d")
    monkeypatch.setenv("NNTRACE_DATA", str(tmp_path / "d"))
    s = load_cifar10()
    assert s.x_train.shape == (40, 32, 32, 3) and s.x_val.shape == (10, 32, 32, 3) and len(s.y_test) == 20
    assert s.x_train.dtype == np.uint8 and s.labels == CIFAR10_LABELS
    np.testing.assert_allclose(s.x_train.mean(axis=(1, 2, 3)), s.y_train * 25, atol=6)  # labels follow images
    again = load_cifar10()  # from the .npz cache now, same split
    np.testing.assert_array_equal(again.y_val, s.y_val)
    assert list((tmp_path / "cache").glob("cifar10-*.npz"))


def test_explicit_path_wins(tmp_path, monkeypatch):
    make_nusax(tmp_path / "mine")
    monkeypatch.setenv("NNTRACE_DATA", str(tmp_path / "missing"))
    s = load_nusax(tmp_path / "mine")
    assert len(s.x_train) == 30 and len(s.x_val) == 9 and s.x_train[1].startswith("Tempat ini ")
    np.testing.assert_array_equal(s.y_train[:6], [0, 1, 2, 0, 1, 2])


def test_nothing_found_says_where_it_looked(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(DataNotFoundError) as info:
        load_nusax(tmp_path / "empty")
    msg = str(info.value)
    assert str(tmp_path / "empty") in msg and "NNTRACE_DATA" in msg and "network unreachable" in msg


def test_bad_csv_is_named(tmp_path):
    make_nusax(tmp_path / "d")
    (tmp_path / "d" / "nusax-senti-ind" / "valid.csv").write_text("id,words\n1,x\n")
    with pytest.raises(DataNotFoundError, match="valid.csv.*'text' and 'label'"):
        load_nusax(tmp_path / "d")

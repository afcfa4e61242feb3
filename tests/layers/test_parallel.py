"""A batch split over threads gives what one thread gives: conv forward and backward, any split."""
import numpy as np
import pytest

from nntrace.layers import Conv2D
from nntrace.layers import parallel

rng = np.random.default_rng(11)


def conv(strides=1, padding="same"):
    layer = Conv2D("c", filters=5, kernel_size=3, strides=strides, padding=padding, activation="relu")
    layer.set_weights([rng.normal(size=(3, 3, 4, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)])
    return layer


@pytest.mark.parametrize("threads", ["2", "3"])
@pytest.mark.parametrize("strides,padding", [(1, "same"), (2, "valid")])
def test_split_batches_equal_one_thread(monkeypatch, threads, strides, padding):
    layer = conv(strides, padding)
    x = rng.normal(size=(37, 9, 8, 4)).astype(np.float32)
    dy = rng.normal(size=layer.forward(x[:1]).shape[1:]).astype(np.float32)
    dy = np.broadcast_to(dy, (37,) + dy.shape) * rng.normal(size=(37, 1, 1, 1)).astype(np.float32)
    monkeypatch.setenv("NNTRACE_THREADS", "1")
    calls = []
    original = parallel.over_batch

    def counting(work, n):
        calls.append(min(parallel.workers(), n // parallel.MIN_SPLIT))
        return original(work, n)

    monkeypatch.setattr("nntrace.layers.conv.over_batch", counting)
    y1 = layer.forward(x)
    dx1, g1 = layer.backward(dy, x)
    first = len(calls)
    monkeypatch.setenv("NNTRACE_THREADS", threads)
    y2 = layer.forward(x)
    dx2, g2 = layer.backward(dy, x)
    assert first >= 2 and set(calls[:first]) == {1}
    assert len(calls) == 2 * first and set(calls[first:]) == {int(threads)}  # the second run was split
    np.testing.assert_allclose(y2, y1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx2, dx1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g2["kernel"], g1["kernel"], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(g2["bias"], g1["bias"])


def test_an_error_in_one_part_is_raised(monkeypatch):
    monkeypatch.setenv("NNTRACE_THREADS", "2")

    def work(lo, hi):
        if lo:
            raise ValueError(f"part {lo}–{hi}")
        return lo

    with pytest.raises(ValueError, match="part 8–16"):
        parallel.over_batch(work, 16)
    assert parallel.over_batch(lambda lo, hi: (lo, hi), 5) == [(0, 5)]  # too small to split

"""Sums over many rows (a bias's gradient, BatchNormalization's γ and β) stay accurate to float32
round-off of the result however many rows are added."""
import numpy as np
import pytest

from nntrace.layers import vector_ops


def cancelling_rows(rows: int, channels: int, seed: int = 0) -> np.ndarray:
    """Rows of size ~10 whose sum is ~100× smaller than a row-after-row float32 sum can keep."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, channels)) * 10
    if rows:
        x -= x.mean(axis=0) - rng.standard_normal(channels) * 0.05  # the columns nearly cancel
    return x.astype(np.float32)


@pytest.mark.parametrize("rows", [1, 255, 256, 257, 8 * 64 * 64, 65536 + 3])
def test_channel_sums_match_a_float64_sum(rows):
    x = cancelling_rows(rows, 8)
    want = x.astype(np.float64).sum(axis=0)
    got = vector_ops.channel_sums(x.reshape(-1, 2, 8) if rows % 2 == 0 else x)
    assert got.dtype == np.float32 and got.shape == (8,)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(x).sum(axis=0).max() / np.sqrt(rows) + 1e-6 * np.abs(want).max()


def test_channel_sums_beat_a_row_after_row_float32_sum():
    x = cancelling_rows(8 * 64 * 64, 8, seed=3)
    want = x.astype(np.float64).sum(axis=0)
    naive = np.abs(x.sum(axis=0, dtype=np.float32) - want).max()
    ours = np.abs(vector_ops.channel_sums(x) - want).max()
    assert ours * 20 < naive, (ours, naive)


@pytest.mark.parametrize("rows", [0, 3, 256, 4099])
def test_channel_dot_sums_match_a_float64_sum(rows):
    a, b = cancelling_rows(rows, 5, 1), cancelling_rows(rows, 5, 2)
    want = (a.astype(np.float64) * b).sum(axis=0)
    got = vector_ops.channel_dot_sums(a, b)
    assert got.dtype == np.float32 and got.shape == (5,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_channel_dot_sums_take_the_shift_off_before_multiplying():
    """Inputs near 50 with a spread of 0.1: Σ dy·x − 50·Σ dy cancels four digits away; taking the
    mean off first keeps them (BatchNormalization's γ gradient is Σ dy·(x − mean)/σ)."""
    rng = np.random.default_rng(5)
    dy = rng.standard_normal((32768, 4)).astype(np.float32)
    x = (50 + 0.1 * rng.standard_normal((32768, 4))).astype(np.float32)
    mean = np.full(4, 50, np.float32)
    want = (dy.astype(np.float64) * (x.astype(np.float64) - 50)).sum(axis=0)
    got = vector_ops.channel_dot_sums(dy, x, mean)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    cancelled = vector_ops.channel_dot_sums(dy, x).astype(np.float64) - 50 * vector_ops.channel_sums(dy)
    assert np.abs(cancelled - want).max() > 10 * np.abs(got - want).max()  # what the shift avoids


def test_batch_normalization_gamma_gradient_far_from_zero():
    from nntrace.layers import BatchNormalization

    rng = np.random.default_rng(6)
    bn = BatchNormalization("bn")
    bn.set_weights([np.ones(4, np.float32), np.zeros(4, np.float32), np.full(4, 50, np.float32),
                    np.full(4, 0.01, np.float32)])
    x = (50 + 0.1 * rng.standard_normal((8, 64, 64, 4))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    _, grads = bn.backward(dy, x)
    inv = 1 / np.sqrt(0.01 + 1e-3)
    want = (dy.astype(np.float64) * (x.astype(np.float64) - 50)).sum(axis=(0, 1, 2)) * inv
    assert np.abs(grads["gamma"] - want).max() <= 1e-5 * np.abs(want).max()

"""Running statistics against numpy, whatever the batching and merge order."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from saliencydb.saliency import RunningStats

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    data=arrays(np.float32, st.tuples(st.integers(2, 60), st.integers(1, 5)), elements=finite),
    cuts=st.lists(st.integers(0, 60), max_size=6),
)
def test_streaming_equals_numpy(data, cuts):
    stats = RunningStats(data.shape[1])
    bounds = sorted({0, data.shape[0], *[c % (data.shape[0] + 1) for c in cuts]})
    for a, b in zip(bounds, bounds[1:]):
        stats.update(data[a:b])
    ref = data.astype(np.float64)
    assert stats.count == data.shape[0]
    np.testing.assert_allclose(stats.mean, ref.mean(0), rtol=1e-9, atol=1e-6)
    want_std = ref.std(0, ddof=1)
    want_std = np.where(want_std <= 1e-14, 1.0, want_std)
    np.testing.assert_allclose(stats.std, want_std, rtol=1e-7, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    a=arrays(np.float64, st.tuples(st.integers(0, 30), st.just(3)), elements=finite),
    b=arrays(np.float64, st.tuples(st.integers(0, 30), st.just(3)), elements=finite),
)
def test_merge_equals_one_stream(a, b):
    left, right, whole = RunningStats(3).update(a), RunningStats(3).update(b), RunningStats(3)
    whole.update(np.concatenate([a, b]))
    merged = left.merge(right)
    assert merged.count == whole.count
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(merged.std, whole.std, rtol=1e-7, atol=1e-6)
    packed = RunningStats.from_moments(merged.moments())
    assert packed.count == merged.count
    np.testing.assert_array_equal(packed.mean, merged.mean)


def test_std_floor_and_small_counts():
    s = RunningStats(3).update(np.array([[1.0, 2.0, 5.0], [1.0, 2.0, 7.0]]))
    np.testing.assert_array_equal(s.std[:2], [1.0, 1.0])  # constant units: floor -> 1
    np.testing.assert_allclose(s.std[2], np.sqrt(2.0))
    assert np.array_equal(RunningStats(2).update(np.ones((1, 2))).std, [1.0, 1.0])
    # a tiny but real spread is kept
    tiny = RunningStats(1).update(np.array([[0.0], [1e-10]]))
    assert 0 < tiny.std[0] < 1e-9

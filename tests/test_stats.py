"""Statistics: percentiles as numpy computes them, for any samples."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flowperf.stats import PERCENTILES, describe

samples = st.lists(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), min_size=1, max_size=300)


@settings(max_examples=300, deadline=None)
@given(values=samples)
def test_describe_matches_numpy(values: list[float]) -> None:
    summary = describe(values)
    array = np.asarray(values)
    for p in PERCENTILES:
        assert summary[f"p{p}"] == np.percentile(array, p)
    assert summary["count"] == len(values)
    assert summary["max"] == array.max() and summary["min"] == array.min()
    assert np.isclose(summary["mean"], array.mean(), rtol=1e-9, atol=1e-6)
    if len(values) > 1:
        assert np.isclose(summary["std"], array.std(ddof=1), rtol=1e-9, atol=1e-6)
    assert (
        summary["min"]
        <= summary["p50"]
        <= summary["p90"]
        <= summary["p95"]
        <= summary["p99"]
        <= summary["max"]
    )


def test_empty_and_nan_samples() -> None:
    assert describe([])["p50"] is None and describe([])["count"] == 0
    assert describe([float("nan"), 2.0])["count"] == 1

"""Summary figures derived from two intervals, checked against their analytic values."""

from __future__ import annotations

import pandas as pd
import pytest

from flowperf.rundir.summary import ttft_beyond_engine


def test_ttft_beyond_the_engine_is_the_client_ttft_minus_the_engine_ttft_where_both_exist() -> None:
    steps = pd.DataFrame({"ttft_ms": [10.0, 25.0, 7.0, 30.0], "engine_ttft_ms": [7.0, 5.0, None, 29.5]})
    assert ttft_beyond_engine(steps).tolist() == pytest.approx([3.0, 20.0, 0.5])
    assert ttft_beyond_engine(pd.DataFrame()).empty

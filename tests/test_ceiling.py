"""`bench run` warns when an HTTP run goes past the client ceiling `bench doctor` measured on this host,
and says nothing when it is within it, when nothing was measured, or for the in-process engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowperf.config import RunConfig
from flowperf.diagnostics.ceiling import cache_path, ceiling_warning
from flowperf.run.benchmark import RunHooks, warn_past_client_ceiling


def measured(ceiling: int | None, levels: tuple[int, ...] = (1, 16, 64, 256, 512)) -> None:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ceiling": ceiling, "levels": [{"concurrency": c} for c in levels]}))


@pytest.fixture(autouse=True)
def no_cache(flowperf_home: Path):
    cache_path().unlink(missing_ok=True)
    yield
    cache_path().unlink(missing_ok=True)


def warnings_for(**settings) -> list[str]:
    warned: list[str] = []
    warn_past_client_ceiling(RunConfig.model_validate(settings), RunHooks(warn=warned.append))
    return warned


def test_past_the_measured_ceiling_an_http_run_is_warned() -> None:
    measured(16)
    engine = {"kind": "openai", "base_url": "http://127.0.0.1:9"}
    (warning,) = warnings_for(engine=engine, concurrency=64)
    assert "more than 16 concurrent streams" in warning and "at 64 streams per client process" in warning
    assert warnings_for(engine=engine, concurrency=16) == []
    (uncapped,) = warnings_for(engine=engine, rate=5.0)
    assert "at uncapped streams" in uncapped
    # four client workers carry 16 streams each: within the ceiling; two carry 32 each: past it
    assert warnings_for(engine=engine, concurrency=64, client={"workers": 4}) == []
    (shared,) = warnings_for(engine=engine, concurrency=64, client={"workers": 2})
    assert "at 32 streams per client process" in shared


def test_no_warning_without_a_measurement_or_for_the_in_process_engine() -> None:
    assert ceiling_warning(512) is None
    measured(16)
    assert warnings_for(concurrency=64) == []  # the in-process engine has no HTTP client
    measured(512)
    assert ceiling_warning(512) is None  # every level measured was within the limit

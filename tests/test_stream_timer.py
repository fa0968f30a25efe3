"""StreamTimer, the one place token events become TTFT, gaps, TPOT and the connection wait, on a clock the
test sets: every figure is worked by hand from the event times, not from the timer's own formulas."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flowperf.engines import streaming
from flowperf.engines.streaming import StreamTimer


class FakeClock:
    """perf_counter returning the times a test queues, and failing if read more often than that."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def perf_counter(self) -> float:
        assert self.times, "the timer read the clock more often than the test expected"
        return self.times.pop(0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    fake = FakeClock()
    monkeypatch.setattr(streaming, "time", fake)
    yield fake
    assert not fake.times, f"clock readings left unused: {fake.times}"


def finish(timer: StreamTimer, **extra: object) -> streaming.StepResult:
    fields = {"text": "", "prompt_tokens": 5, "cached_prompt_tokens": None, "finish_reason": "length"}
    return timer.result(**fields | extra)  # type: ignore[arg-type]


def test_a_multi_token_event_gives_one_gap_and_counts_every_token(clock: FakeClock) -> None:
    """Submitted at 10.000 s; events at 10.050 (1 token), 10.060 (3 tokens), 10.090 (2 tokens); done at
    10.100: TTFT 50 ms, gaps 10 and 30 ms (one per later event), 6 tokens, TPOT (100 - 50) / 5 = 10 ms."""
    clock.times = [10.000, 10.050, 10.060, 10.090, 10.100]
    timer = StreamTimer()
    for count in (1, 3, 2):
        timer.tokens_arrived(count)
    result = finish(timer)
    assert result.ttft_ms == pytest.approx(50.0)
    assert result.itl_ms == pytest.approx([10.0, 30.0])
    assert result.output_tokens == 6 and result.e2e_ms == pytest.approx(100.0)
    assert result.tpot_ms == pytest.approx(10.0)
    assert result.connect_wait_ms is None  # in-process: no connection to wait for


def test_events_of_one_network_read_share_its_time(clock: FakeClock) -> None:
    """Two events parsed from one read at 2.030 s are one arrival: a zero gap, and the clock is not read
    for either of them (parsing time stays out of the gaps)."""
    clock.times = [2.000, 2.050]  # created, finished: nothing in between
    timer = StreamTimer()
    timer.tokens_arrived(1, at=2.010)
    timer.tokens_arrived(1, at=2.030)
    timer.tokens_arrived(2, at=2.030)
    result = finish(timer)
    assert result.ttft_ms == pytest.approx(10.0)
    assert result.itl_ms == pytest.approx([20.0, 0.0])
    assert result.output_tokens == 4


def test_request_sent_keeps_the_connection_wait_out_of_ttft(clock: FakeClock) -> None:
    """Created at 1.000, a connection free at 1.200 (request sent), first token at 1.230, done at 1.260:
    a 200 ms connection wait, and TTFT and step time from 1.200."""
    clock.times = [1.000, 1.200, 1.230, 1.260]
    timer = StreamTimer()
    timer.request_sent()
    timer.tokens_arrived(1)
    result = finish(timer)
    assert result.connect_wait_ms == pytest.approx(200.0)
    assert result.ttft_ms == pytest.approx(30.0) and result.e2e_ms == pytest.approx(60.0)


def test_empty_events_are_not_tokens_and_the_engines_count_wins(clock: FakeClock) -> None:
    """A role-only first chunk (no token) neither starts TTFT nor makes a gap; an engine-reported token
    count replaces the sum over events."""
    clock.times = [0.0, 0.070]  # created, finished
    timer = StreamTimer()
    timer.tokens_arrived(0, at=0.005)
    timer.tokens_arrived(1, at=0.020)
    timer.tokens_arrived(1, at=0.040)
    result = finish(timer, output_tokens=3)
    assert result.ttft_ms == pytest.approx(20.0) and result.itl_ms == pytest.approx([20.0])
    assert result.output_tokens == 3 and result.tpot_ms == pytest.approx((70.0 - 20.0) / 2)


def test_no_token_at_all_has_no_ttft(clock: FakeClock) -> None:
    clock.times = [0.0, 0.010]
    result = finish(StreamTimer())
    assert result.ttft_ms is None and result.itl_ms == [] and result.tpot_ms is None

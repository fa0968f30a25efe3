"""`bench ab -n N`: N workflows per arm, as every other command counts them, turned into block pairs
(rounded up to whole blocks, said in one line); -n with --pairs is one line naming both."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from flowperf.cli.main import app
from flowperf.errors import UserError
from flowperf.modes.ab import run as ab_run
from flowperf.modes.ab.run import block_pairs


class Stop(Exception):
    """Raised in place of building the plan: nothing is started or written."""


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def capture(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs)
        raise Stop

    monkeypatch.setattr(ab_run, "build_plan", capture)
    return calls


def test_n_is_workflows_per_arm_rounded_up_to_whole_blocks(planned: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(app, ["ab", "--b", "--max-tokens 8", "-n", "10", "--block-workflows", "4"])
    assert isinstance(result.exception, Stop), result.output
    assert (planned[0]["pairs"], planned[0]["block_workflows"]) == (3, 4)
    assert (
        "-n 10: 3 block pair(s) of 4 workflows, so 12 workflows per arm, rounded up from 10" in result.output
    )


def test_pairs_alone_and_the_default_are_unchanged(planned: list[dict[str, Any]]) -> None:
    CliRunner().invoke(app, ["ab", "--b", "--max-tokens 8", "--pairs", "5"])
    CliRunner().invoke(app, ["ab", "--b", "--max-tokens 8"])
    assert [call["pairs"] for call in planned] == [5, 10]


def test_n_that_fills_whole_blocks_says_so_without_rounding() -> None:
    said: list[str] = []
    assert block_pairs(None, 12, 4, said.append) == 3
    assert said == ["-n 12: 3 block pair(s) of 4 workflows, so 12 workflows per arm"]


def test_n_and_pairs_together_is_one_line() -> None:
    with pytest.raises(UserError, match=r"^-n 8 and --pairs 2 both size the A/B test; give one$"):
        block_pairs(2, 8, 4, print)

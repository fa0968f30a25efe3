"""Engine-side rows in `bench compare` and `bench ab`: each server's engine figures in both runs (arms)
and the change, report only: a run whose engine state differs wildly but whose client figures do not
still passes the gate."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from rich.console import Console

from flowperf.diagnostics.mockserver import MockConfig, serve_in_thread
from flowperf.modes.ab.report import ab_html, print_ab
from flowperf.modes.ab.run import arm_engine_state
from flowperf.outputs.compare import engine_state_rows
from helpers import run_bench, run_in_process

CHANGED = {
    "waiting_mean": 5.5,
    "waiting_max": 12.0,
    "kv_usage_max": 0.9,
    "preemptions": 7.0,
    "prefix_cache_hit_ratio": 0.25,
}


def row_of(stdout: str, figure: str) -> list[str]:
    (line,) = [line for line in stdout.splitlines() if line.startswith("endpoint 0") and figure in line]
    return line.split(figure)[1].split()


def test_compare_shows_each_servers_engine_figures_and_never_gates_them(tmp_path: Path) -> None:
    with serve_in_thread(MockConfig(ttft_ms=5, itl_ms=2, lifetime_s=60)) as server:
        base = run_in_process(
            tmp_path, "base", {"kind": "openai", "base_url": f"http://127.0.0.1:{server.port}"},
            num_flows=4, max_tokens=8, monitor={"sample_interval_s": 0, "server_metrics_interval_s": 0.05},
        ).run_dir  # fmt: skip
    new = tmp_path / "new"
    shutil.copytree(base, new)
    summary = json.loads((new / "summary.json").read_text())
    (before,) = summary["engine_state"]
    summary["engine_state"][0] = before | CHANGED | {"ttft_ms": before["ttft_ms"] | {"p50": 123.0}}
    (new / "summary.json").write_text(json.dumps(summary))
    done = run_bench("compare", str(base), str(new), env={"COLUMNS": "200"}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr  # the client's figures are the same: no gate
    assert "regression" not in done.stderr and "engine state, per server" in done.stdout
    waiting = before["waiting_max"]
    assert row_of(done.stdout, "waiting max") == [f"{waiting:.0f}", "12", f"{12 - waiting:+.0f}"]
    assert row_of(done.stdout, "preemptions") == [
        f"{before['preemptions']:.0f}",
        "7",
        f"{7 - before['preemptions']:+.0f}",
    ]
    assert row_of(done.stdout, "KV usage max %")[1:] == ["90.0", f"{90 - before['kv_usage_max'] * 100:+.1f}"]
    assert row_of(done.stdout, "prefix-cache hit %")[1] == "25.0"
    assert row_of(done.stdout, "server TTFT p50 ms") == [
        f"{before['ttft_ms']['p50']:.1f}",
        "123.0",
        f"{123.0 - before['ttft_ms']['p50']:+.1f}",
    ]


def test_servers_pair_by_endpoint_and_a_server_on_one_side_only_shows_dashes() -> None:
    base = [{"server": "http://a:1/metrics", "endpoint": 0, "waiting_max": 2.0}]
    new = [
        {"server": "http://a:2/metrics", "endpoint": 0, "waiting_max": 5.0},
        {"server": "http://router/metrics", "endpoint": None, "waiting_max": 1.0},
    ]
    header, rows = engine_state_rows(base, new)
    assert header == ["server", "engine figure", "base", "new", "change"]
    assert ["endpoint 0", "waiting max", "2", "5", "+3"] in rows
    assert ["http://router/metrics", "waiting max", "-", "1", "-"] in rows
    assert engine_state_rows([], []) == (header, [])


def ab_document(engine_state: dict) -> dict:
    return {
        "ab_id": "ab1", "mode": "shared_engine", "status": "complete", "block_workflows": 4, "blocks": [],
        "order": [], "setting_differences": [],
        "arms": {arm: {"options": "", "run_dir": arm.lower()} for arm in "AB"},
        "analysis": {"alpha": 0.05, "threshold_pct": 5.0, "metrics": []},
        "engine_state": engine_state,
    }  # fmt: skip


def test_ab_shows_each_arms_engine_figures(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    state = {"server": "s", "endpoint": 0, "waiting_mean": 1.25, "preemptions": 3.0}
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"engine_state": [state]}))
    document = ab_document({"A": arm_engine_state(tmp_path / "a"), "B": [state | {"preemptions": 10.0}]})
    assert arm_engine_state(tmp_path / "b") == []  # no block finished yet
    console = Console(record=True, width=200)
    print_ab(console, document)
    text = console.export_text()
    assert "engine state per server" in text
    (line,) = [line for line in text.splitlines() if "preemptions" in line]
    assert re.findall(r"[+-]?[\d.]+", line.split("preemptions")[1]) == ["3", "10", "+7"]
    assert "waiting mean" in ab_html(document) and "+7" in ab_html(document)

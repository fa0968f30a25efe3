"""`bench report` on real runs: terminal, JSON, a self-contained HTML page (in headless Chromium), and
a crashed run reported as partial."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from faults import FaultyEngine
from flowperf.config import RunConfig
from flowperf.run.benchmark import RunHooks, run_benchmark
from helpers import ROOT, run_bench

pytestmark = pytest.mark.engine

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(engine, engine_loop, tmp_path_factory) -> Path:
    config = RunConfig.model_validate(
        {
            "flows_dir": str(ROOT / "flows"),
            "fixtures_dir": str(ROOT / "fixtures"),
            "num_flows": 12,
            "concurrency": 3,
            "max_tokens": 8,
            "monitor": {"sample_interval_s": 0.05},
            "output": {"out_dir": str(tmp_path_factory.mktemp("report") / "runs"), "run_id": "done"},
        }
    )
    faulty = FaultyEngine(engine, fail_flows={5}, fail_step="refine")
    return engine_loop.run(run_benchmark(config, RunHooks(echo=lambda _: None), engine=faulty)).run_dir


def test_terminal_report_has_every_section(finished_run: Path) -> None:
    done = run_bench("report", str(finished_run), env={"COLUMNS": "200"}, timeout=120)
    assert done.returncode == 0, done.stderr
    for expected in (
        "flowperf run", "complete", "vllm", "CUDA graphs", "closed loop, concurrency 3", "timing",
        "engine start-up", "measured window", "latency by step", "summarize", "ttft p99", "itl p95",
        "tpot p50", "throughput", "prefix cache by step position", "resources", "peak RSS", "RSS growth",
        "failures", "EngineError", "injected failure in flow 5 step refine", "LLM steps by turn depth",
        "where the time went", "LLM requests in flight",
    ):  # fmt: skip
        assert expected in done.stdout, expected


def test_json_report_carries_summary_and_tables(finished_run: Path) -> None:
    done = run_bench("report", str(finished_run), "--json", timeout=120)
    report = json.loads(done.stdout)
    assert report["status"] == "complete" and report["counts"]["workflows_done"] == 12
    assert [row["step"] for row in report["tables"]["per_step"]] == ["summarize", "critique", "refine"]
    assert len(report["tables"]["workflows"]) == 12
    assert report["tables"]["failures"] == [
        {
            "error_type": "EngineError",
            "workflows": 1,
            "first_message": "injected failure in flow 5 step refine",
        }
    ]


def test_html_report_is_self_contained_and_renders_in_a_browser(finished_run: Path, tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    done = run_bench("report", str(finished_run), "--html", str(page), timeout=180)
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched from anywhere
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', html)) == 10
    default = run_bench("report", str(finished_run), "--html", timeout=180)
    assert default.returncode == 0 and (finished_run / "report.html").is_file()
    check_in_browser(page, expected_images=10)


def check_in_browser(page: Path, expected_images: int) -> None:
    """Load the page in Debian's Chromium: no console error, no request but the page, every image drawn."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed here (scripts/test.sh installs it where it can)")
    playwright = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    requests: list[str] = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page()
            tab.on(
                "console", lambda message: errors.append(message.text) if message.type == "error" else None
            )
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.on("request", lambda request: requests.append(request.url))
            tab.goto(page.as_uri(), wait_until="load")
            sizes = tab.eval_on_selector_all(
                "img", "images => images.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
            )
        finally:
            browser.close()
    assert errors == []
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert len(sizes) == expected_images
    assert all(complete and width > 0 and height > 0 for complete, width, height in sizes), sizes


def test_a_crashed_run_is_reported_as_partial(finished_run: Path, tmp_path: Path) -> None:
    crashed = tmp_path / "crashed"
    shutil.copytree(finished_run, crashed)
    (crashed / "summary.json").unlink()
    lines = (crashed / "workflows.csv").read_text().splitlines()
    (crashed / "workflows.csv").write_text(
        "\n".join(lines[:5]) + "\n" + lines[5][:20]
    )  # 4 rows and a torn one
    done = run_bench("report", str(crashed), "--json", timeout=120)
    report = json.loads(done.stdout)
    assert report["status"] == "partial"
    assert report["counts"]["workflows_done"] == 4 and report["counts"]["workflows_planned"] == 12
    assert report["counts"]["steps_done"] == 12  # only the steps of the four workflows the directory counts
    terminal = run_bench("report", str(crashed), env={"COLUMNS": "200"}, timeout=120)
    assert "partial: the run did not finish" in terminal.stdout


def test_report_of_something_that_is_not_a_run(tmp_path: Path) -> None:
    done = run_bench("report", str(tmp_path), timeout=60)
    assert done.returncode == 2 and "not a run directory (no config.json)" in done.stderr

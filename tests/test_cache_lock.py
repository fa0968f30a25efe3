"""The expansion cache under concurrent writers: separate processes storing at once lose nothing.

Each round gets a fresh flows directory holding one distinct template per (worker, slot); every worker
process waits at a barrier, then expands its own templates into that directory at the same instant. An
unlocked read-modify-write of the index loses entries here (one writer's index overwrites another's), and
an unlocked cleanup deletes expanded files that another writer is about to record.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
from multiprocessing.synchronize import Barrier
from pathlib import Path

from flowperf.flows.cache import CACHE_FILE_NAME, expand_with_cache

ROOT = Path(__file__).resolve().parents[1]
BASE_TEMPLATES = ("summarize_critique_refine", "plan_draft_check")
WORKERS = 4
SLOTS = 3
ROUNDS = 8
NUM_FLOWS = 5


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fail(message: str) -> None:
    raise AssertionError(message)


def _template_name(worker: int, slot: int) -> str:
    return f"w{worker}_s{slot}"


def _write_round(round_dir: Path) -> list[Path]:
    """A flows directory with a distinct template (own name, so own hash) for every worker and slot."""
    shutil.copytree(ROOT / "fixtures", round_dir / "fixtures")
    flows_dir = round_dir / "flows"
    flows_dir.mkdir()
    templates = []
    for worker in range(WORKERS):
        for slot in range(SLOTS):
            base = BASE_TEMPLATES[(worker + slot) % len(BASE_TEMPLATES)]
            text = (ROOT / "flows" / f"{base}.yaml").read_text(encoding="utf-8")
            name = _template_name(worker, slot)
            template = flows_dir / f"{name}.yaml"
            template.write_text(text.replace(f"name: {base}\n", f"name: {name}\n", 1), encoding="utf-8")
            templates.append(template)
    return templates


def _expand_rounds(worker: int, round_dirs: list[Path], barrier: Barrier) -> None:
    """Worker process: in every round, start with the others, then expand this worker's templates."""
    for round_dir in round_dirs:
        barrier.wait(timeout=60)
        for slot in range(SLOTS):
            template = round_dir / "flows" / f"{_template_name(worker, slot)}.yaml"
            expand_with_cache(template, NUM_FLOWS, force=False, warn=_fail)


def test_concurrent_processes_lose_no_cache_entry(tmp_path: Path) -> None:
    round_dirs = [tmp_path / f"round{index}" for index in range(ROUNDS)]
    templates = {round_dir: _write_round(round_dir) for round_dir in round_dirs}
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    workers = [
        context.Process(target=_expand_rounds, args=(worker, round_dirs, barrier))
        for worker in range(WORKERS)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        if process.is_alive():  # hung (say, a lock never released): leave no process behind
            process.kill()
    assert [process.exitcode for process in workers] == [0] * WORKERS

    for round_dir, round_templates in templates.items():
        index = json.loads((round_dir / "flows" / CACHE_FILE_NAME).read_text(encoding="utf-8"))
        names = {_sha256(template): template.stem for template in round_templates}
        assert len(names) == WORKERS * SLOTS  # every template distinct, so every store is its own entry
        stored = sorted(names.get(entry["template_sha256"], "?") for entry in index["entries"])
        assert stored == sorted(names.values()), round_dir.name
        for template in round_templates:
            warnings: list[str] = []
            cached = expand_with_cache(template, NUM_FLOWS, force=False, warn=warnings.append)
            fresh = expand_with_cache(template, NUM_FLOWS, force=True, warn=warnings.append)
            assert (cached.source, warnings) == ("cache", []), template
            assert cached.flows.to_json() == fresh.flows.to_json()

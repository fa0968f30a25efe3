"""The expansion cache: skip expansion when the template, fixture and flow count are unchanged.

`flows/.expanded_cache.json` lists entries keyed by sha256(template bytes), sha256(fixture bytes),
num_flows and the expander's format version; each points at an expanded file under `flows/.expanded/`
with that file's own sha256. A hit costs two file hashes and one JSON parse, no YAML, no Jinja. Anything
wrong with the cache (unreadable, truncated, edited, pointing at a missing file) is a miss with a warning:
the cache can only ever save time, never change a result or stop a run.

Several runs may expand into one flows directory at once, so `store` does its whole read-modify-write
(expanded file, index, removal of unreferenced files) under an exclusive lock on
`flows/.expanded_cache.lock`. Lookups take no lock: both files are replaced atomically, so a reader sees
a whole old or whole new version, and the worst a concurrent store can do to it is evict its entry (a
miss with a warning).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from flowperf.errors import UserError
from flowperf.flows.expand import FORMAT_VERSION, ExpandedFlowSet, expand
from flowperf.flows.fixtures import load_fixture_file
from flowperf.flows.graph import load_template
from flowperf.flows.source import WorkflowSource
from flowperf.locking import exclusive_lock
from flowperf.rundir.durable import atomic_write_text

CACHE_FILE_NAME = ".expanded_cache.json"
LOCK_FILE_NAME = ".expanded_cache.lock"
EXPANDED_DIR_NAME = ".expanded"
MAX_ENTRIES = 32

Warn = Callable[[str], None]


class CacheEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template_sha256: str
    fixture_sha256: str
    fixture_path: str
    num_flows: int
    format_version: int
    expanded_path: str
    expanded_sha256: str
    created_at: float


class CacheIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entries: list[CacheEntry] = []


@dataclass(frozen=True)
class Expansion:
    """A run's workflows and where they came from (`cache` or `generated` expansion, or a `trace`)."""

    flows: WorkflowSource
    source: Literal["cache", "generated", "trace"]


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_template_hash(template_path: Path) -> str:
    try:
        return _sha256_file(template_path)
    except FileNotFoundError:
        raise UserError(f"{template_path}: flow template not found") from None
    except OSError as error:
        raise UserError(f"{template_path}: cannot read flow template ({error.strerror})") from None


class ExpansionCache:
    """The cache index of one flows directory."""

    def __init__(self, flows_dir: Path, warn: Warn) -> None:
        self.flows_dir = Path(flows_dir)
        self.index_path = self.flows_dir / CACHE_FILE_NAME
        self.lock_path = self.flows_dir / LOCK_FILE_NAME
        self.expanded_dir = self.flows_dir / EXPANDED_DIR_NAME
        self._warn = warn

    def load_index(self) -> CacheIndex:
        try:
            text = self.index_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return CacheIndex()
        except (OSError, UnicodeDecodeError) as error:
            self._warn(f"expansion cache {self.index_path} is unreadable ({error}); regenerating")
            return CacheIndex()
        try:
            return CacheIndex.model_validate_json(text)
        except ValidationError:
            self._warn(f"expansion cache {self.index_path} is corrupt; regenerating")
            return CacheIndex()

    def lookup(self, template_path: Path, template_sha256: str, num_flows: int) -> ExpandedFlowSet | None:
        """The cached expansion for these exact inputs, or None (with a warning if the cache is damaged)."""
        for entry in self.load_index().entries:
            if (
                entry.template_sha256 != template_sha256
                or entry.num_flows != num_flows
                or entry.format_version != FORMAT_VERSION
            ):
                continue
            fixture_path = template_path.parent / entry.fixture_path
            try:
                if _sha256_file(fixture_path) != entry.fixture_sha256:
                    continue
            except OSError:
                continue
            return self._read_expanded(entry)
        return None

    def _read_expanded(self, entry: CacheEntry) -> ExpandedFlowSet | None:
        path = self.flows_dir / entry.expanded_path
        try:
            raw = path.read_bytes()
        except OSError as error:
            self._warn(f"cached expansion {path} is missing or unreadable ({error.strerror}); regenerating")
            return None
        if hashlib.sha256(raw).hexdigest() != entry.expanded_sha256:
            self._warn(f"cached expansion {path} does not match its recorded hash; regenerating")
            return None
        try:
            flows = ExpandedFlowSet.from_json(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            self._warn(f"cached expansion {path} is corrupt ({type(error).__name__}); regenerating")
            return None
        if flows.template_sha256 != entry.template_sha256 or flows.fixture_sha256 != entry.fixture_sha256:
            self._warn(f"cached expansion {path} belongs to other inputs; regenerating")
            return None
        return flows

    def store(self, template_path: Path, fixture_path: str, flows: ExpandedFlowSet) -> None:
        """Record `flows`; a cache that cannot be written costs a warning, never the run.

        Everything happens under the lock, the expanded file's write included: otherwise another process's
        cleanup, working from an index that does not name that file yet, could delete it before it is
        recorded.
        """
        text = flows.to_json()
        relative = (
            f"{EXPANDED_DIR_NAME}/{flows.name}-{len(flows)}-"
            f"{flows.template_sha256[:12]}-{flows.fixture_sha256[:12]}.json"
        )
        entry = CacheEntry(
            template_sha256=flows.template_sha256,
            fixture_sha256=flows.fixture_sha256,
            fixture_path=fixture_path,
            num_flows=len(flows),
            format_version=FORMAT_VERSION,
            expanded_path=relative,
            expanded_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            created_at=time.time(),
        )
        try:
            with exclusive_lock(self.lock_path):
                atomic_write_text(self.flows_dir / relative, text)
                index = self.load_index()
                kept = [e for e in index.entries if e.expanded_path != relative][-(MAX_ENTRIES - 1) :]
                atomic_write_text(
                    self.index_path, CacheIndex(entries=[*kept, entry]).model_dump_json(indent=1) + "\n"
                )
                self._remove_unreferenced({e.expanded_path for e in [*kept, entry]})
        except OSError as error:
            self._warn(f"cannot write the expansion cache in {self.flows_dir} ({error.strerror}); continuing")

    def _remove_unreferenced(self, referenced: set[str]) -> None:
        for path in self.expanded_dir.glob("*.json"):
            if f"{EXPANDED_DIR_NAME}/{path.name}" not in referenced:
                path.unlink(missing_ok=True)


def expand_with_cache(template_path: Path, num_flows: int, *, force: bool, warn: Warn) -> Expansion:
    """Expanded flows for `template_path`, from the cache when its inputs are unchanged."""
    if num_flows < 1:
        raise UserError(f"--num-flows must be at least 1, got {num_flows}")
    template_path = Path(template_path)
    cache = ExpansionCache(template_path.parent, warn)
    template_sha256 = _read_template_hash(template_path)
    if not force:
        cached = cache.lookup(template_path, template_sha256, num_flows)
        if cached is not None:
            return Expansion(flows=cached, source="cache")
    template = load_template(template_path)
    fixture = load_fixture_file(template_path.parent / template.fixture.path, template.fixture.fields)
    flows = expand(template, template_sha256, fixture, num_flows)
    cache.store(template_path, template.fixture.path, flows)
    return Expansion(flows=flows, source="generated")

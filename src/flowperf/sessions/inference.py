"""Which session a recorded request belongs to, which request it waited for, and how long the agent paused.

The recording proxy sees requests, not agents. Its rule, applied when a request's response has ended:

1. Session: the `X-Session-Id` header if the client sent one; else the body's `user` field; else inferred
   from content (3).
2. Parent (`needs`): the earlier request whose prompt plus its own response is the longest prefix of this
   request's prompt, among requests that ended before this one started (and, with a declared session, of
   that session). For chat the prompt is the list of messages and the response one more assistant message
   (compared by role and whitespace-stripped text content, message by message); for completions it is the
   prompt text followed by the output text. With a declared session and no such request, the needs are
   the session's frontier: its requests that ended before this one started and that no other of those
   needs (none for its first). So a chain needs its last request, and a join after a fan-out (a reduce
   step after parallel map steps) needs every branch.
3. Without a declared session, a request with a parent joins the parent's session and one without starts
   a new one (`inferred-N`). So a conversation that resends its history is one chain; requests that
   extend the same turn (parallel tool calls, forked sub-agents) are siblings with the same parent.
   "Ended before" allows `END_SLACK_MS` (5 ms): the proxy stamps an end after its last write returned,
   and the client's next request can be received first.
4. `think_ms` is this start minus the end of the last of its needs (floor 0); without needs, this
   start minus the session's start (the earliest start among its requests placed so far).

Limits: an agent that rewrites its history (summarising or trimming old turns, editing the assistant's
text, dropping reasoning) no longer extends the earlier prompt, so without a declared session its next
request starts a new session; assistant tool calls are compared by their text content only; a sub-agent
that starts a fresh conversation is its own session unless the client declares one; token-id prompts
cannot be matched to text outputs. A request matched by content records one parent, even if it also
waited for others; the frontier of a declared session can name a branch the request did not wait for
(one that happened to end before it started).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_END = b"\x1e"
# A response's end is stamped once the proxy's last write returned; a client that acts on the last event
# can have its next request received a moment before that. "Ended before it started" allows this much.
END_SLACK_MS = 5.0


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _message_bytes(role: Any, content: Any) -> bytes:
    return f"{role}\x1f{_content_text(content).strip()}".encode("utf-8", "surrogatepass") + _END


def encode_messages(messages: list[Any]) -> bytes:
    """A chat transcript as bytes in which a transcript's prefixes are whole messages."""
    return b"".join(_message_bytes(m.get("role"), m.get("content")) for m in messages if isinstance(m, dict))


def transcript_of(api: str, body: dict[str, Any]) -> bytes | None:
    """What a later request would have to start with to extend this one's prompt; None if not matchable."""
    if api == "chat":
        messages = body.get("messages")
        return encode_messages(messages) if isinstance(messages, list) else None
    prompt = body.get("prompt")
    return prompt.encode("utf-8", "surrogatepass") if isinstance(prompt, str) else None


def continuation_of(api: str, transcript: bytes, output: str) -> bytes:
    """The transcript followed by the response, as a later request would resend it."""
    if api == "chat":
        return transcript + _message_bytes("assistant", output)
    return transcript + output.encode("utf-8", "surrogatepass")


class PrefixIndex:
    """Byte strings by hash and length, to find which registered ones are prefixes of a new one in one
    pass over it (one incremental hash, a digest at each registered length), however many are registered."""

    def __init__(self) -> None:
        self._lengths: list[int] = []
        self._known: set[int] = set()
        self._owners: dict[tuple[int, bytes], list[str]] = {}

    def add(self, text: bytes, owner: str) -> None:
        key = (len(text), hashlib.blake2b(text, digest_size=16).digest())
        if len(text) not in self._known:
            self._known.add(len(text))
            bisect.insort(self._lengths, len(text))
        self._owners.setdefault(key, []).append(owner)

    def longest(
        self, text: bytes, accept: Callable[[str], bool], separator: bytes | None = None
    ) -> str | None:
        """The latest-registered owner of the longest registered prefix of `text` that `accept` takes.

        With a `separator` only prefixes that end with it are tried (a chat transcript's message ends: as
        many as it has messages); without one, every registered length up to len(text)."""
        lengths = self._lengths if separator is None else _ends_of(text, separator)
        hasher = hashlib.blake2b(digest_size=16)
        done = 0
        found: list[list[str]] = []
        for length in lengths:
            if length > len(text):
                break
            hasher.update(text[done:length])
            done = length
            owners = self._owners.get((length, hasher.copy().digest()))
            if owners:
                found.append(owners)
        for owners in reversed(found):
            for owner in reversed(owners):
                if accept(owner):
                    return owner
        return None


def _ends_of(text: bytes, separator: bytes) -> list[int]:
    ends = []
    at = text.find(separator)
    while at >= 0:
        ends.append(at + len(separator))
        at = text.find(separator, at + len(separator))
    return ends


@dataclass(frozen=True)
class Observed:
    """One answered request, as inference needs it (times in ms on the recorder's clock)."""

    id: str
    start_ms: float
    end_ms: float
    declared_session: str | None
    transcript: bytes | None
    continuation: bytes | None
    chat: bool = True


@dataclass(frozen=True)
class Placement:
    session: str
    needs: list[str]
    think_ms: float


@dataclass
class _Placed:
    session: str
    start_ms: float
    end_ms: float


@dataclass
class SessionInference:
    """Places answered requests into sessions, in the order their responses end (see the module doc)."""

    _placed: dict[str, _Placed] = field(default_factory=dict)
    _needs: dict[str, list[str]] = field(default_factory=dict)
    _session_start: dict[str, float] = field(default_factory=dict)
    _members: dict[str, list[str]] = field(default_factory=dict)
    _index: PrefixIndex = field(default_factory=PrefixIndex)
    _numbers: itertools.count = field(default_factory=lambda: itertools.count(1))

    def place(self, request: Observed) -> Placement:
        parent = self._content_parent(request)
        needs = [parent] if parent else []
        declared = request.declared_session
        if declared is not None:
            session = declared
            needs = needs or self._frontier(declared, request.start_ms)
        elif parent is not None:
            session = self._placed[parent].session
        else:
            session = f"inferred-{next(self._numbers)}"
        start = min(self._session_start.get(session, request.start_ms), request.start_ms)
        self._session_start[session] = start
        since = max((self._placed[need].end_ms for need in needs), default=start)
        self._placed[request.id] = _Placed(session, request.start_ms, request.end_ms)
        self._needs[request.id] = needs
        self._members.setdefault(session, []).append(request.id)
        if request.continuation is not None:
            self._index.add(request.continuation, request.id)
        return Placement(session, needs, max(0.0, request.start_ms - since))

    def _content_parent(self, request: Observed) -> str | None:
        if request.transcript is None:
            return None

        def accept(owner: str) -> bool:
            placed = self._placed[owner]
            same = request.declared_session is None or placed.session == request.declared_session
            return same and placed.end_ms <= request.start_ms + END_SLACK_MS

        return self._index.longest(request.transcript, accept, _END if request.chat else None)

    def _frontier(self, session: str, before_ms: float) -> list[str]:
        """The session's requests ended by `before_ms` that none of the others ended by then needs, in
        the order they ended."""
        ended = sorted(
            (self._placed[member].end_ms, member)
            for member in self._members.get(session, [])
            if self._placed[member].end_ms <= before_ms + END_SLACK_MS
        )
        needed = {need for _, member in ended for need in self._needs[member]}
        return [member for _, member in ended if member not in needed]

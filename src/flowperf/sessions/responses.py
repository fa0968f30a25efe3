"""What the recording proxy learns from a response it forwards, with as little work as possible per chunk.

While a stream is forwarded the proxy only needs to know when the first content arrives (for TTFT) and,
if it added `stream_options.include_usage` itself, to leave out the usage-only event the client did not
ask for. Everything else (output text, usage, an error event) is read from the kept chunks after the
response has ended, off the path of the bytes the client is waiting for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_EVENT_END = b"\n\n"


@dataclass
class Answer:
    """What one response said: its text (first choice), the server's usage, and an error if it sent one."""

    text: str = ""
    usage: dict[str, Any] | None = None
    error: Any = None


def _choice_text(choice: dict[str, Any]) -> str:
    text = choice.get("text")
    if text is None:
        holder = choice.get("delta") or choice.get("message") or {}
        text = holder.get("content")
    return text if isinstance(text, str) else ""


def _has_content(choice: dict[str, Any]) -> bool:
    """Whether an event's choice carries output: text, content, reasoning, a tool call or token ids."""
    if choice.get("text") or choice.get("token_ids"):
        return True
    delta = choice.get("delta") or {}
    return any(delta.get(key) for key in ("content", "reasoning_content", "reasoning", "tool_calls"))


def _payloads(data: bytes) -> list[Any]:
    """The JSON payloads of the `data:` lines in `data` (not [DONE], not malformed ones)."""
    payloads = []
    for line in data.splitlines():
        if line.startswith(b"data:"):
            text = line[5:].strip()
            if text and text != b"[DONE]":
                try:
                    payloads.append(json.loads(text))
                except ValueError:
                    continue
    return payloads


def _is_usage_only(event: bytes) -> bool:
    if b'"usage"' not in event:
        return False
    return any(isinstance(p, dict) and not p.get("choices") and p.get("usage") for p in _payloads(event))


class StreamWatch:
    """Follows one SSE stream as it is forwarded: `feed` each upstream chunk and send what it returns."""

    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.content_in_last_feed = False
        self._looking = True
        self._pending = bytearray()
        self._chunks: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to forward now: the chunk itself, or with `strip_usage` its complete events less the
        added usage-only one (a partial event waits for its end, which the client could not use before)."""
        self._chunks.append(chunk)
        self.content_in_last_feed = False
        if not (self.strip_usage or self._looking):
            return chunk
        self._pending += chunk
        cut = self._pending.rfind(_EVENT_END)
        if cut < 0:
            return b"" if self.strip_usage else chunk
        complete = bytes(self._pending[: cut + 2])
        del self._pending[: cut + 2]
        if self._looking and self._any_content(complete):
            self._looking = False
            self.content_in_last_feed = True
            if not self.strip_usage:
                self._pending.clear()
        if not self.strip_usage:
            return chunk
        events = complete.split(_EVENT_END)[:-1]
        return b"".join(event + _EVENT_END for event in events if not _is_usage_only(event))

    def flush(self) -> bytes:
        """What is left at the end of the stream (a last event without its blank line)."""
        rest, self._pending = bytes(self._pending), bytearray()
        return rest if self.strip_usage else b""

    @staticmethod
    def _any_content(events: bytes) -> bool:
        for payload in _payloads(events):
            if isinstance(payload, dict) and any(
                isinstance(choice, dict) and _has_content(choice) for choice in payload.get("choices") or []
            ):
                return True
        return False

    def answer(self) -> Answer:
        """Read the whole stream once it has ended."""
        answer = Answer()
        pieces = []
        for payload in _payloads(b"".join(self._chunks)):
            if not isinstance(payload, dict):
                continue
            if "error" in payload:
                answer.error = payload["error"]
            answer.usage = payload.get("usage") or answer.usage
            for choice in payload.get("choices") or []:
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    pieces.append(_choice_text(choice))
        answer.text = "".join(pieces)
        return answer


def body_answer(body: bytes) -> Answer:
    """A non-streamed response's text (first choice) and usage."""
    try:
        data = json.loads(body)
    except ValueError:
        return Answer(error="the response is not JSON")
    if not isinstance(data, dict):
        return Answer(error="the response is not a JSON object")
    choices = [c for c in data.get("choices") or [] if isinstance(c, dict)]
    text = _choice_text(choices[0]) if choices else ""
    return Answer(text=text, usage=data.get("usage"), error=data.get("error"))

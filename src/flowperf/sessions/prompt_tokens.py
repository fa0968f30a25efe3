"""The token ids of a recorded request's prompt, from which its KV-block hash ids are made.

Two sources: the upstream server's `POST /tokenize` (vLLM's: `{"model", "prompt"}` for completions,
`{"model", "messages", ...}` for chat, rendered with the server's own chat template, so the ids are what
the server prefilled), or a local Hugging Face tokenizer (`--tokenizer PATH`; chat through the
tokenizer's chat template with the generation prompt). A completions prompt given as token ids is used
as it is. Asked only after a response has ended, on a connection pool of its own, so tokenizing never
delays a forwarded response. None means "unknown": the request is then recorded without hash ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from flowperf.errors import UserError

# the fields of a chat request that change how vLLM renders its prompt, passed on to /tokenize
_CHAT_RENDERING = (
    "tools",
    "chat_template",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
)


def given_token_ids(body: dict[str, Any]) -> list[int] | None:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(token, int) for token in prompt):
        return prompt
    return None


class UpstreamTokenizer:
    """The upstream server's /tokenize; after one 404 or 405 it is not asked again."""

    source = "upstream /tokenize"

    def __init__(self, base_url: str, warn: Callable[[str], None]) -> None:
        self._url = base_url + "/tokenize"
        self._warn = warn
        self._available = True
        self._client: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def token_ids(self, api: str, body: dict[str, Any]) -> list[int] | None:
        given = given_token_ids(body)
        if given is not None or not self._available or self._client is None:
            return given
        request: dict[str, Any] = {"model": body.get("model")}
        if api == "chat":
            request["messages"] = body.get("messages")
            request |= {key: body[key] for key in _CHAT_RENDERING if key in body}
        else:
            request["prompt"] = body.get("prompt")
            request["add_special_tokens"] = body.get("add_special_tokens", True)
        try:
            async with self._client.post(self._url, json=request) as response:
                if response.status in (404, 405):
                    self._available = False
                    self._warn(
                        f"the upstream has no /tokenize (HTTP {response.status}): recording prompt token "
                        "counts without hash ids (pass --tokenizer PATH for them)"
                    )
                    return None
                if response.status != 200:
                    self._warn(
                        f"the upstream's /tokenize answered HTTP {response.status}: such requests are "
                        "recorded without hash ids"
                    )
                    return None
                tokens = (await response.json(content_type=None)).get("tokens")
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
            return None
        return tokens if isinstance(tokens, list) else None


class LocalTokenizer:
    """A Hugging Face tokenizer directory, run in a thread so the proxy's event loop is not held."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoTokenizer  # a heavy import, paid only with --tokenizer

        self.source = f"tokenizer {path}"
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as error:
            raise UserError(f"--tokenizer {path}: cannot load a tokenizer there ({error})") from None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _encode(self, api: str, body: dict[str, Any]) -> list[int] | None:
        given = given_token_ids(body)
        if given is not None:
            return given
        try:
            if api == "chat":
                ids = self._tokenizer.apply_chat_template(
                    body.get("messages"),
                    tools=body.get("tools"),
                    add_generation_prompt=body.get("add_generation_prompt", True),
                    tokenize=True,
                    return_dict=False,
                    **(body.get("chat_template_kwargs") or {}),
                )
            else:
                prompt = body.get("prompt")
                ids = self._tokenizer.encode(prompt) if isinstance(prompt, str) else None
        except Exception:  # a template that cannot render this request: no hash ids
            return None
        return list(ids) if ids is not None else None

    async def token_ids(self, api: str, body: dict[str, Any]) -> list[int] | None:
        return await asyncio.to_thread(self._encode, api, body)


PromptTokenizer = UpstreamTokenizer | LocalTokenizer

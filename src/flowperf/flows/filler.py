"""Deterministic filler text of about N tokens: what a tool result adds to a transcript, without a tool.

The text is words drawn (seeded) from a fixed vocabulary of the kind tool output is made of: paths,
identifiers, log and test-runner words. How many tokens a word costs depends on the model's tokenizer,
so the run measures it once on the model's own tokenizer where it has one (`tokens_per_word`) and asks
for N / that many words; the exact size of every turn's prompt is then what the engine reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCABULARY = """
src tests lib utils config main index handler request response error warning info debug trace
passed failed skipped collected module function class method return value type string int list dict
file path line column import from def self args kwargs none true false assert expected actual diff
added removed changed commit branch merge build compile link run exit status code output input
read write open close buffer stream socket timeout retry cache key hash node edge graph queue worker
thread process memory cpu time total count size length offset token batch step epoch loss
"""
WORDS = tuple(VOCABULARY.split())
SAMPLE_WORDS = 4000
DEFAULT_TOKENS_PER_WORD = 1.3


class FillerText:
    """Filler of about `tokens` tokens, the same text for the same seed."""

    def __init__(self, tokens_per_word: float = DEFAULT_TOKENS_PER_WORD) -> None:
        self.tokens_per_word = tokens_per_word

    def text(self, tokens: int, seed: int) -> str:
        count = max(1, round(tokens / self.tokens_per_word))
        picks = np.random.default_rng(seed).integers(len(WORDS), size=count)
        words = [WORDS[k] for k in picks]
        lines = [" ".join(words[start : start + 12]) for start in range(0, count, 12)]
        return "\n".join(lines)


def tokens_per_word(model_dir: Path | None) -> float:
    """Tokens per filler word under the tokenizer in `model_dir` (a local model), or the default for a
    model whose tokenizer is not on this machine."""
    tokenizer_file = Path(model_dir) / "tokenizer.json" if model_dir else None
    if tokenizer_file is None or not tokenizer_file.is_file():
        return DEFAULT_TOKENS_PER_WORD
    from tokenizers import Tokenizer

    sample = FillerText(1.0).text(SAMPLE_WORDS, seed=0)
    tokens = len(Tokenizer.from_file(str(tokenizer_file)).encode(sample, add_special_tokens=False).ids)
    return tokens / SAMPLE_WORDS

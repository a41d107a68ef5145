"""One usage meter for every backend call: prompt tokens, generated tokens, calls, wall seconds.

Budgets are expressed in generated tokens, the same unit for every algorithm, so that
accuracy-versus-compute comparisons are fair by construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Usage:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    calls: int = 0
    seconds: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.generated_tokens + other.generated_tokens,
            self.calls + other.calls,
            self.seconds + other.seconds,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens - other.prompt_tokens,
            self.generated_tokens - other.generated_tokens,
            self.calls - other.calls,
            self.seconds - other.seconds,
        )

    def to_dict(self) -> dict:
        return asdict(self)


class UsageMeter:
    """Accumulates usage; `snapshot()` and subtraction give the usage of any stretch of work."""

    def __init__(self) -> None:
        self.total = Usage()

    def record(self, prompt_tokens: int, generated_tokens: int, seconds: float, calls: int = 1) -> None:
        self.total = self.total + Usage(prompt_tokens, generated_tokens, calls, seconds)

    def snapshot(self) -> Usage:
        return Usage(**asdict(self.total))

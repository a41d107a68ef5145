"""One usage meter for every backend call: prompt tokens, generated tokens, calls, wall seconds,
and the tokens a separate verifier model processed.

Budgets are expressed in generated tokens, the same unit for every algorithm, so that
accuracy-versus-compute comparisons are fair by construction. Beside them every search reports the
forward tokens each model processed (a FLOP proxy): the policy's `prompt_tokens + generated_tokens`
(the `self` scorer's judgements are policy forwards too) and `verifier_tokens`, the input tokens of
a learned verifier (a PRM, an implicit PRM's two models), so no algorithm hides its verifier's cost.

`prompt_tokens` counts every row's prompt, what a call costs with nothing shared, so a search's
count does not depend on what it shared a call with; `cached_tokens` is the part of them that was
not computed (a prefix shared by a call's rows prefilled once, a server's prefix cache).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class Usage:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    calls: int = 0
    seconds: float = 0.0
    verifier_tokens: int = 0
    cached_tokens: int = 0
    """The part of `prompt_tokens` not computed: a prefix shared by a call's rows prefilled once, or
    what a server says it served from its prefix cache."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Usage)))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(Usage)))

    @property
    def forward_tokens(self) -> int:
        """Tokens the policy processed: prompts (prefills) and generated tokens."""
        return self.prompt_tokens + self.generated_tokens

    def to_dict(self) -> dict:
        return asdict(self)


class UsageMeter:
    """Accumulates usage; `snapshot()` and subtraction give the usage of any stretch of work."""

    def __init__(self) -> None:
        self.total = Usage()

    def record(self, prompt_tokens: int, generated_tokens: int, seconds: float, calls: int = 1,
               verifier_tokens: int = 0, cached_tokens: int = 0) -> None:
        self.total = self.total + Usage(prompt_tokens, generated_tokens, calls, seconds, verifier_tokens,
                                        cached_tokens)

    def snapshot(self) -> Usage:
        return Usage(**asdict(self.total))

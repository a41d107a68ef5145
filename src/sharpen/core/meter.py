"""One usage meter for every backend call: prompt tokens, generated tokens, calls, wall seconds,
and the tokens a separate verifier model processed.

A budget is expressed in one field of this usage, the process's `budget_unit` (`BUDGET_UNITS`):
generated tokens for a language model, the same unit for every algorithm, so that
accuracy-versus-compute comparisons are fair by construction. Beside them every search reports the
forward tokens each model processed (a FLOP proxy): the policy's `prompt_tokens + generated_tokens`
(the `self` scorer's judgements are policy forwards too) and `verifier_tokens`, the input tokens of
a learned verifier (a PRM, an implicit PRM's two models), so no algorithm hides its verifier's cost.

`prompt_tokens` counts every row's prompt, what a call costs with nothing shared, so a search's
count does not depend on what it shared a call with; `cached_tokens` is the part of them that was
not computed (a prefix shared by a call's rows prefilled once, a server's prefix cache).

A non-language process counts its own units beside them: `nfe`, denoiser forward passes of one row
each (a diffusion process's compute unit and budget unit), and `reward_calls`, reward-model
evaluations of one sample. Both are left out of `Usage.to_dict()` while zero, so the usage a
language-model search writes is unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

OPTIONAL_FIELDS = ("nfe", "reward_calls")
"""Fields `Usage.to_dict()` writes only when non-zero."""

BUDGET_UNITS = {"generated_tokens": "generated tokens", "nfe": "denoiser forward passes (NFE)"}
"""The `Usage` fields a budget can be expressed in (a process's `budget_unit`), and how to say them."""

DEFAULT_UNIT = "generated_tokens"
"""The budget unit of a process that declares none (every language-model process)."""


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
    nfe: int = 0
    """Denoiser forward passes, one per row (a diffusion process's compute unit)."""
    reward_calls: int = 0
    """Reward-model evaluations, one per sample scored."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Usage)))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(Usage)))

    @property
    def forward_tokens(self) -> int:
        """Tokens the policy processed: prompts (prefills) and generated tokens."""
        return self.prompt_tokens + self.generated_tokens

    def to_dict(self) -> dict:
        """Every field, less `nfe` and `reward_calls` while they are zero."""
        d = asdict(self)
        for key in OPTIONAL_FIELDS:
            if not d[key]:
                del d[key]
        return d


class UsageMeter:
    """Accumulates usage; `snapshot()` and subtraction give the usage of any stretch of work."""

    def __init__(self) -> None:
        self.total = Usage()

    def record(self, prompt_tokens: int, generated_tokens: int, seconds: float, calls: int = 1,
               verifier_tokens: int = 0, cached_tokens: int = 0, nfe: int = 0, reward_calls: int = 0) -> None:
        self.total = self.total + Usage(prompt_tokens, generated_tokens, calls, seconds, verifier_tokens,
                                        cached_tokens, nfe, reward_calls)

    def snapshot(self) -> Usage:
        return Usage(**asdict(self.total))

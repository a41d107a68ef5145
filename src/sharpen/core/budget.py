"""A compute budget in a process's unit, read off its `UsageMeter`: generated tokens for a language
model, denoiser forward passes (`nfe`) for a diffusion process (the process's `budget_unit`, see
`sharpen.core.meter.BUDGET_UNITS`; "tokens" below means that unit).

Every algorithm spends the same unit, so accuracy-versus-compute comparisons are fair by
construction.

Planning is at the *expected* cost of a row, measured as the search goes: for each kind of row
("step", "answer" for completions and rollouts, "judge" for one-token verifier calls), the expected
cost is (prior + tokens so far) / (1 + rows so far), i.e. the mean generated tokens per row with one
pseudo-row at a prior: the length of a step / a solution in the prompt's worked examples when the
process knows it (`LMProcess` does), else the row's maximum. So the first call of a kind plans at
what the shown format costs, later ones at what rows of that kind actually cost in this search.
A generated row costs at least one token, so the expected cost of a token row is at least 1; a
denoiser row may cost less than one forward (k noise draws from one forward, or a forward already
run to value the node), so an NFE row's expected cost has no such floor.
Measurements are per search (per budget), so a tree never depends on other problems searched
before or beside it.

The guarantee: a search never spends more than `tokens + max_call_tokens`, where `max_call_tokens`
is the largest `rows x max tokens per row` of any single call the budget allowed (a row is one step
for step-level calls, one whole solution for completions and rollouts). It holds because a call is
allowed only while `spent < tokens`, and a call of r rows can spend at most r x its row maximum.
Planning at the expected cost makes that last call larger than planning at the worst case did (at
most the requested rows, e.g. k of an expansion), and buys the configured number of candidates
whenever the budget left covers them at their expected cost. What was actually spent beyond the
budget is recorded as `overshoot` in every tree's usage; a budget in another unit than generated
tokens adds `budget_unit` to it (`budget_tokens` then holds the budget in that unit).
"""

from __future__ import annotations

from sharpen.core.errors import BudgetError, ConfigError
from sharpen.core.meter import BUDGET_UNITS, DEFAULT_UNIT, Usage, UsageMeter

EXAMPLE_BUDGET = {"generated_tokens": 1024, "nfe": 400}
"""A budget to suggest in an error message, per unit."""


class Budget:
    def __init__(self, meter: UsageMeter, tokens: int, prior: dict[str, float] | None = None,
                 unit: str = DEFAULT_UNIT):
        if unit not in BUDGET_UNITS:
            raise ConfigError(f"unknown budget unit {unit!r} (fix: one of {', '.join(BUDGET_UNITS)})")
        if tokens <= 0:
            raise BudgetError(f"budget must be a positive number of {BUDGET_UNITS[unit]}, got {tokens} "
                              f"(fix: --budget {EXAMPLE_BUDGET[unit]})")
        self.meter = meter
        self.unit = unit
        self.tokens = int(tokens)
        self.min_row_cost = 1.0 if unit == DEFAULT_UNIT else 0.0  # a token row costs at least one token
        self.start = meter.snapshot()
        self.max_call_tokens = 0  # the largest rows x row maximum of one allowed call (the overshoot bound)
        self._seen: dict[str, list[int]] = {}  # kind -> [rows, generated tokens]
        self._pending: tuple[str, int, int] | None = None  # (kind, rows, generated tokens before the call)
        self.prior = dict(prior or {})  # kind -> expected tokens of a row before any is measured

    def _count(self) -> int:
        """The meter's running total in the budget's unit."""
        return getattr(self.meter.total, self.unit)

    @property
    def spent(self) -> int:
        return self._count() - getattr(self.start, self.unit)

    @property
    def remaining(self) -> int:
        return max(0, self.tokens - self.spent)

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.tokens

    # -- measuring rows --------------------------------------------------------------------
    def _settle(self) -> None:
        """Attribute the tokens generated since the last allowed call to that call's kind. Every
        budgeted generating call asks `rows` first, so the meter delta between two asks is exactly
        the previous call's tokens."""
        if self._pending is not None:
            kind, rows, before = self._pending
            seen = self._seen.setdefault(kind, [0, 0])
            seen[0] += rows
            seen[1] += self._count() - before
            self._pending = None

    def expected(self, kind: str, max_tokens: int) -> float:
        """Expected cost (in the budget's unit) of one row of `kind` whose maximum is `max_tokens`."""
        self._settle()
        rows, tokens = self._seen.get(kind, (0, 0))
        prior = min(max_tokens, self.prior.get(kind, max_tokens))
        return max(self.min_row_cost, (prior + tokens) / (1 + rows))

    def fit(self, requested: int, row_cost: float) -> int:
        """How many of `requested` rows of expected cost `row_cost` to plan for: as many as the budget
        left covers at that cost, at least one while the budget is not spent."""
        if requested <= 0 or self.exhausted:
            return 0
        return min(requested, max(1, int(self.remaining // max(1e-9, row_cost))))

    def rows(self, requested: int, row_tokens: int, kind: str | None = None) -> int:
        """How many of `requested` rows of `kind` (at most `row_tokens` each; without a kind, rows are
        told apart by that maximum) may be issued now, at their expected cost; the call is then
        measured (see `expected`)."""
        kind = kind or f"max{row_tokens}"
        n = self.fit(requested, self.expected(kind, row_tokens))
        if n:
            self.max_call_tokens = max(self.max_call_tokens, n * row_tokens)
            self._pending = (kind, n, self._count())
        return n

    def usage(self) -> Usage:
        """What was actually spent since the budget was opened."""
        return self.meter.snapshot() - self.start

    def report(self) -> dict:
        """The budget, what was spent (`Usage.to_dict()`), the forward tokens, and the overshoot and
        its bound in the budget's unit; `budget_unit` too when that is not generated tokens."""
        self._settle()
        used = self.usage()
        unit = {} if self.unit == DEFAULT_UNIT else {"budget_unit": self.unit}
        return {"budget_tokens": self.tokens, **unit, **used.to_dict(), "forward_tokens": used.forward_tokens,
                "overshoot": max(0, getattr(used, self.unit) - self.tokens), "overshoot_bound": self.max_call_tokens}


def allowed_rows(budget: Budget | None, requested: int, row_tokens: int, kind: str | None = None) -> int:
    """`budget.rows(...)`, or every row when there is no budget."""
    return requested if budget is None else budget.rows(requested, row_tokens, kind)


def allot(items: list[int], k: int, rows: int) -> tuple[list[int], int]:
    """Fit `len(items) * k` requested rows into `rows`: fewer per item first, then fewer items.
    Returns the items served and the rows each gets (every served item gets the same k, so a
    single batched call with `n=k` serves them all)."""
    if rows >= len(items) * k:
        return items, k
    if rows >= len(items) and items:
        return items, rows // len(items)
    return items[:rows], 1

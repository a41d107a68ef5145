"""A compute budget in generated tokens, read off a process's `UsageMeter`.

Every algorithm spends the same unit, so accuracy-versus-compute comparisons are fair by
construction. The guarantee: a search never spends more than `tokens + one row's max tokens`
(a row is one step for step-level calls, one whole solution for completions and rollouts).
It holds because every generating call asks `rows()` how many rows it may issue: the rows that
surely fit (`remaining // row_tokens`), or one row when none surely fits; only that single row can
overshoot, and after it `remaining` is 0 and no further rows are allowed.
"""

from __future__ import annotations

from sharpen.errors import BudgetError
from sharpen.meter import Usage, UsageMeter


class Budget:
    def __init__(self, meter: UsageMeter, tokens: int):
        if tokens <= 0:
            raise BudgetError(f"budget must be a positive number of generated tokens, got {tokens} (fix: --budget 1024)")
        self.meter = meter
        self.tokens = int(tokens)
        self.start = meter.snapshot()

    @property
    def spent(self) -> int:
        return self.meter.total.generated_tokens - self.start.generated_tokens

    @property
    def remaining(self) -> int:
        return max(0, self.tokens - self.spent)

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.tokens

    def rows(self, requested: int, row_tokens: int) -> int:
        """How many of `requested` rows, each costing at most `row_tokens`, may be issued now: as many
        as surely fit, or a single one when not even one surely fits (the only overshoot)."""
        if requested <= 0 or self.exhausted:
            return 0
        return min(requested, max(1, self.remaining // max(1, row_tokens)))

    def usage(self) -> Usage:
        """What was actually spent since the budget was opened."""
        return self.meter.snapshot() - self.start

    def report(self) -> dict:
        return {"budget_tokens": self.tokens, **self.usage().to_dict()}


def allowed_rows(budget: Budget | None, requested: int, row_tokens: int) -> int:
    """`budget.rows(...)`, or every row when there is no budget."""
    return requested if budget is None else budget.rows(requested, row_tokens)


def allot(items: list[int], k: int, rows: int) -> tuple[list[int], int]:
    """Fit `len(items) * k` requested rows into `rows`: fewer per item first, then fewer items.
    Returns the items served and the rows each gets (every served item gets the same k, so a
    single batched call with `n=k` serves them all)."""
    if rows >= len(items) * k:
        return items, k
    if rows >= len(items) and items:
        return items, rows // len(items)
    return items[:rows], 1

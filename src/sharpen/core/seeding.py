"""One way to derive a seed from several integers: `derive_seed(seed, call, row)` gives an
independent 63-bit stream seed for each tuple of parts (order matters), the same on every machine
and in every process (a hash, not Python's randomised `hash`)."""

from __future__ import annotations

import hashlib

SEED_BITS = 63


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (order matters): blake2b over each part as 16 signed
    little-endian bytes, so (1, 23) and (12, 3) differ and negative parts are allowed."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(int(p).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & (2**SEED_BITS - 1)

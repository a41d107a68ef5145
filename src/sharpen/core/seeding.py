"""One way to derive a seed from several parts: `derive_seed(seed, call, row)` gives an
independent seed for each tuple of parts (order matters), the same on every machine and in every
process (a hash, not Python's randomised `hash`). Every seed sharpen derives comes from here: a
problem's tree seed from the search seed and the problem id, a round's seed from the run seed and
the round, a sampled row's stream from its prompt's seed and its index."""

from __future__ import annotations

import hashlib

SEED_BITS = 63


def _part(p: int | str) -> int:
    """An integer part as is; a string part as the integer of its blake2b digest (15 bytes, so it
    fits the 16 signed bytes an integer part takes)."""
    if isinstance(p, str):
        return int.from_bytes(hashlib.blake2b(p.encode("utf-8"), digest_size=15).digest(), "little")
    return int(p)


def derive_seed(*parts: int | str, bits: int = SEED_BITS) -> int:
    """A `bits`-bit seed (63 by default; 31 for seeds that numpy or a server's 32-bit field must take)
    from integers and strings, order mattering: blake2b over each part as 16 signed little-endian
    bytes, so (1, 23) and (12, 3) differ and negative parts are allowed."""
    if not 1 <= bits <= SEED_BITS:
        raise ValueError(f"bits must be in 1..{SEED_BITS}, got {bits}")
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(_part(p).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & (2**bits - 1)

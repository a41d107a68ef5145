"""Answer extraction from a solution written one step per line, ending with an `Answer:` line."""

from __future__ import annotations

import re

_WRAPPERS = re.compile(r"^[\s*_$`]+|[\s*_$`]+$")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(.+?)\s*(?:\.\s*$|$)", re.IGNORECASE)


def extract_answer(text: str, prefix: str = "Answer:", fallback: bool = True) -> str | None:
    """The text after the first line that starts with `prefix` (case-insensitive, markdown bullets
    and bold allowed), without wrapping `$`, `**` or a trailing period. Without such a line and
    with `fallback`: "the answer is X", else the last number in the text (small models often end
    with an equation instead of an Answer line). None when nothing is found."""
    p = prefix.lower()
    for line in text.splitlines():
        s = line.strip().lstrip("-*# ").strip()
        s = s.replace("**", "")
        if s.lower().startswith(p):
            ans = _WRAPPERS.sub("", s[len(prefix) :])
            ans = ans.rstrip(".").strip()
            ans = _WRAPPERS.sub("", ans)
            return ans or None
    if not fallback:
        return None
    m = _ANSWER_IS.search(text)
    if m:
        return _WRAPPERS.sub("", m.group(1)) or None
    nums = _NUMBER.findall(text)
    return nums[-1].replace(",", "") if nums else None


def vote_key(answer: str | None) -> str | None:
    """A canonical form for majority voting: numbers compare by value ("7", "7.0", "7.00" agree)."""
    if answer is None:
        return None
    s = answer.strip().replace(",", "")
    try:
        x = float(s)
    except ValueError:
        return " ".join(s.lower().split())
    if x.is_integer():
        return str(int(x))
    return repr(x)

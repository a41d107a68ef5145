"""Greedy accuracy of the base model under a few prompt variants (n held-out chain_sum problems).

    python docs/scripts/prompt_probe.py current noshot plain whatis3 q2 q3 q1 [--n 200]
"""

import argparse
import time

import sharpen.core.tasks as T
from sharpen.backends import load_backend
from sharpen.core.tasks import SYSTEM_PROMPT, load_task
from sharpen.search.evaluate import EvalConfig, evaluate

Q = "State the final answer to the following arithmetic problem: "
CHAIN = ("4 - 8 + 1", "4 - 8 = -4\n-4 + 1 = -3\nAnswer: -3")


def shots(pairs, system=True):
    m = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    for q, a in pairs:
        m += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return m


VARIANTS = {
    "current": None,  # sharpen.core.tasks.Task.messages as shipped
    "noshot": shots([]),
    "plain": [],  # the question alone (the chat template adds its default system prompt)
    "whatis3": shots([(f"What is {q}?", a) for q, a in (*T.EXAMPLES, CHAIN)]),
    "q2": shots([(Q + q.removeprefix("What is ").rstrip("?") + " =", a) for q, a in T.EXAMPLES]),
    "q3": shots([(Q + q.removeprefix("What is ").rstrip("?") + " =", a) for q, a in T.EXAMPLES] + [(Q + CHAIN[0] + " =", CHAIN[1])]),
    "q1": shots([(Q + CHAIN[0] + " =", CHAIN[1])]),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    problems = task.problems("test", args.n, seed=0)
    backend = load_backend("smollm2-135m", seed=0)
    shipped = T.Task.messages
    for name in args.variants:
        prefix = VARIANTS[name]
        T.Task.messages = shipped if prefix is None else (lambda self, p, m=prefix: m + [{"role": "user", "content": p.question}])
        t0 = time.time()
        m = evaluate(backend, task, problems, EvalConfig(samples=0, max_tokens=40, problems_per_call=32))
        print(f"{name}: greedy {m['greedy']:.3f} (n={args.n}, {time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

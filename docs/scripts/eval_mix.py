"""The mix of a run config's evaluation problems by number of terms (chain_sum), on the test split and on
`eval.split: validation`, beside the training-split problems that follow the pool (no model is loaded):

    .venv/bin/python docs/scripts/eval_mix.py configs/chain_sum-grpo.yaml
"""

from __future__ import annotations

import collections
import sys
import tempfile

from sharpen.core.errors import ConfigError
from sharpen.loop.config import load_config
from sharpen.loop.runner import LoopRunner


def terms(problems: list) -> list[tuple[int, int]]:
    """(terms, problems) pairs: a term is a whitespace-separated number of the question."""
    return sorted(collections.Counter(sum(w.isdigit() for w in p.question.split()) for p in problems).items())


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        for split in ("test", "validation"):
            cfg = load_config(sys.argv[1], {"eval.split": split})
            runner = LoopRunner(cfg, tempfile.mkdtemp())
            print(f"{split}: {terms(runner.test)}")
    except ConfigError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    pool = cfg.collect.pool or cfg.collect.problems * cfg.rounds
    after = runner.task.problems("train", pool + cfg.eval.n, seed=cfg.seed)[pool:]
    print(f"the {cfg.eval.n} training problems after the pool: {terms(after)}")


if __name__ == "__main__":
    main()

"""The backend interface: batched sampling of k continuations for many prompts at once.

Shaped so an OpenAI-compatible HTTP server (vLLM, SGLang, `transformers serve`) can implement it:
prompts are plain strings, stopping is described by a delimiter and a mode, and every call is
recorded in one `UsageMeter`. HF specifics stay in `hf.py`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sharpen.core.meter import UsageMeter
from sharpen.core.seeding import derive_seed

FinishReason = Literal["step", "answer", "eos", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `stop_at="step"` ends a continuation at the first `delimiter`;
    `stop_at="answer"` ends it when a line starting with `answer_prefix` is complete (or at EOS)."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop_at: Literal["step", "answer"] = "answer"
    delimiter: str = "\n"
    answer_prefix: str = "Answer:"
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Completion:
    """One continuation. `text` ends with the delimiter when `finish_reason == "step"`.
    `logprob` is the summed log-probability of `token_ids` under the model at temperature 1."""

    text: str
    token_ids: list[int]
    num_tokens: int
    finish_reason: FinishReason
    logprob: float


class Backend(Protocol):
    meter: UsageMeter
    name: str
    eos_text: str
    """The text of the token that ends a solution ("" when unknown): a step pair whose step ended the
    solution trains on this ending, so a preference can be about stopping as well as about the step."""

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """Render chat messages into the prompt string that continuations extend."""

    def generate(
        self, prompts: list[str], params: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        """For each prompt, `params.n` continuations. Row j of prompt i samples from its own random
        stream, `row_seed(seeds[i], j)` (see `prompt_seeds` for the default `seeds`), so a row's
        tokens do not depend on which other rows share the call."""

    def next_token_logprobs(self, prompts: list[str], candidates: list[str]) -> list[dict[str, float]]:
        """Log-probability of each candidate's first token right after each prompt
        (used by the `self` scorer: P(Yes) of a yes/no judgement). Counts one generated token."""

    def count_tokens(self, text: str) -> int:
        """Number of tokens in `text`."""

    def close(self) -> None:
        """Release what the backend holds open (a server client's connections and thread); the
        backend is not used afterwards. Whoever loaded a backend closes it when done."""


class BackendBase:
    """What every backend class shares: `close()`, a no-op unless the backend holds connections or
    threads, and use as a context manager (`with load_backend(spec) as backend:` closes it)."""

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def close_all(*owned: Any) -> None:
    """`close()` each of `owned` that has one (backends, scorers holding a backend; None skipped),
    every one even when an earlier one fails; the first failure is raised after the rest."""
    first: BaseException | None = None
    for x in owned:
        close = getattr(x, "close", None)
        if close is None:
            continue
        try:
            close()
        except Exception as e:  # noqa: BLE001 - the rest still close; the first failure is raised below
            first = first or e
    if first is not None:
        raise first


class LocalTokenizer:
    """What every backend with a local tokenizer (`self.tokenizer`) shares: prompts rendered with the
    model's own chat template, token counts, the EOS text. The server backend renders prompts here too,
    so search sees the same prompt strings whichever backend generates."""

    tokenizer: Any

    @property
    def eos_text(self) -> str:
        return self.tokenizer.eos_token or ""

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


mix_seed = derive_seed
"""Independent streams for (tree seed, call, row): `sharpen.core.seeding.derive_seed`."""


def prompt_seeds(params: SamplingParams, n_prompts: int, seeds: Sequence[int] | None,
                 rng: random.Random | None = None) -> list[int]:
    """Each prompt's stream seed: the caller's `seeds`, else derived from `params.seed` and the
    prompt's index, else drawn from `rng` (unseeded calls)."""
    if seeds is not None:
        if len(seeds) != n_prompts:
            raise ValueError(f"{len(seeds)} seeds for {n_prompts} prompts")
        return [int(s) for s in seeds]
    if params.seed is not None:
        return [mix_seed(params.seed, i) for i in range(n_prompts)]
    rng = rng or random.Random()
    return [rng.randrange(2**63) for _ in range(n_prompts)]


def row_seed(prompt_seed: int, sample: int) -> int:
    """The stream seed of sample `sample` of a prompt whose seed is `prompt_seed`. Sample 0 keeps the
    prompt's seed, so a caller can flatten k samples of a prompt into k prompts of one sample each
    (seeds `row_seed(s, j)`) and get the very same rows (the lockstep batcher does)."""
    return int(prompt_seed) if sample == 0 else mix_seed(prompt_seed, sample)

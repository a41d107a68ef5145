"""sharpen against the peer library its_hub (1.2): same problems, prompt, model and token budget.

    .venv/bin/python benchmarks/peers.py                                  # self-consistency only
    .venv/bin/python benchmarks/peers.py --prm runs/prm/merged --n 50 --budget 96 --through-server

Problems: held-out reasoning-gym chain_sum (2-3 one-digit terms), sharpen's messages (system prompt,
worked examples, question), answers by `task.extract` and checked by `task.verify`. The model is
smollm2-135m behind a real `transformers serve` on CPU (started here), which its_hub talks to.

its_hub side (its own classes): `SelfConsistency` (voting on `task.vote_key(task.extract(text))`,
`LMOrchestrator`), and with `--prm`, `BeamSearch` and `ParticleFiltering` over `StepGeneration` (one
line a step: stop string "\\n", which the server drops and its_hub puts back between steps; a step
holding "Answer:" ends a path; at most max_depth steps).
Two small adaptations, in `ServeLM`, a subclass of `OpenAICompatibleLanguageModel`:
- `endpoint_type = "openai"` (a URL without "openai" is taken for vLLM, whose raw `extra_body` the
  server refuses with HTTP 422), and a `generation_config` JSON field with `do_sample` (the client has
  no way to add body fields, and `transformers serve` samples only when that field says so; `top_k: 0`,
  or transformers' global default top-k 50 would truncate the distribution sharpen samples in full);
- beam search and particle filtering flatten the chat into one "system: ...\\nuser: ..." user message
  (`ChatMessages.to_prompt`); the request gets the task's own messages back, so the prompt is sharpen's.
`SharpenPRM` puts `sharpen.train.prm.PRMModel` behind `AbstractProcessRewardModel`: a partial solution
is split into lines and scored like sharpen's `PRMScorer` (P(good) at the last step's boundary, after
the chat-rendered prompt). Token counts come from the server's `usage`.

Budgets: its_hub's budget is a count (samples, beams, particles). Each its_hub algorithm is first run
at budget 2 on 2 training problems, giving t = generated tokens per unit; at --budget B it then gets
max(1, round(B / t)) units (beam search: width 2 from 4 beams up, a multiple of it). sharpen's own
algorithms get B generated tokens a problem (`sharpen.api.sweep`).

Known limits of its_hub on this server: without vLLM's `continue_final_message`, the next step of a
partial solution is a new assistant turn after it (not its continuation), and a step ended by EOS does
not end the path.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from its_hub.api import AbstractProcessRewardModel, ChatMessage, ChatMessages, GenerationUsage
from its_hub.core.algorithms.beam_search import BeamSearch
from its_hub.core.algorithms.particle_gibbs import ParticleFiltering
from its_hub.core.algorithms.self_consistency import SelfConsistency
from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel
from its_hub.core.lms.step_generation import StepGeneration
from its_hub.core.orchestrator import LMOrchestrator
from its_hub.core.utils import extract_content_from_lm_response

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

TASK_ARGS = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}
TEMPERATURE, STEP_TOKENS, ROLLOUT_TOKENS, MAX_DEPTH, PARALLEL = 0.7, 24, 48, 5, 16
PILOT = 2  # training problems on which an its_hub unit's token cost is measured


class ServeLM(OpenAICompatibleLanguageModel):
    """its_hub's OpenAI client made to work with `transformers serve` (see the module docstring)."""

    def __init__(self, url: str, model: str, tokenizer, max_tokens: int, chats: dict[str, list[dict]]):
        super().__init__(endpoint=url, api_key="EMPTY", model_name=model, max_completion_tokens=max_tokens,
                         temperature=TEMPERATURE, max_concurrency=PARALLEL)
        self.endpoint_type = "openai"
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": pad}
        self.chats = chats  # ChatMessages.to_prompt() text -> the task's messages
        self.usage = GenerationUsage()

    def _prepare_request_data(self, messages, stop=None, max_completion_tokens=None, temperature=None,
                              include_stop_str_in_output=None, *rest) -> dict:
        first = messages[0].content if isinstance(messages[0], ChatMessage) else messages[0].get("content")
        if isinstance(first, str) and first in self.chats:
            messages = [ChatMessage(**m) for m in self.chats[first]] + list(messages[1:])
        # include_stop_str_in_output is vLLM's; for an "openai" endpoint its_hub only logs a warning per request
        data = super()._prepare_request_data(messages, stop, max_completion_tokens, temperature, None, *rest)
        if (data.get("temperature") or 0) > 0:
            data["generation_config"] = json.dumps({"do_sample": True, "temperature": data["temperature"],
                                                    "top_p": 1.0, "top_k": 0, "max_new_tokens": data.get("max_completion_tokens"),
                                                    **self.ids})
        return data

    async def agenerate(self, messages, **kwargs):  # StepGeneration's path: count the server's usage
        return await super().agenerate(messages, **{**kwargs, "usage_accumulator": self.usage})

    async def agenerate_single(self, messages, **kwargs):  # the orchestrator's path (self-consistency)
        return await super().agenerate_single(messages, **{**kwargs, "usage_accumulator": self.usage})


class SharpenPRM(AbstractProcessRewardModel):
    """sharpen's PRM (`PRMModel.encode` + `score_encoded`, as `PRMScorer` calls it) for its_hub."""

    def __init__(self, path: str, prompts: dict[str, tuple[str, str]]):
        from sharpen.search.scorers.prm_model import PRMModel

        self.prm = PRMModel.load(path, max_length=None, require_format=False, delimiter="\n")
        # ChatMessages.to_prompt() text -> what this PRM reads before the steps: sharpen's chat-rendered
        # prompt, or the bare question for a PRM trained with context=question (as PRMScorer gives it)
        self.prompts = {k: self.prm.context_of(rendered, q) for k, (rendered, q) in prompts.items()}
        self.tokens = 0  # the PRM's input tokens (sharpen's verifier tokens)

    def score(self, prompt_or_messages, steps: list[str]) -> list[float]:
        prompt = self.prompts[prompt_or_messages]
        lists = [[s for s in text.split("\n") if s.strip()] for text in steps]
        enc = [(ids, pos[-1:] or [len(ids) - 1]) for ids, pos in self.prm.encode([prompt] * len(lists), lists)]
        self.tokens += sum(len(ids) for ids, _ in enc)
        return [p[-1] for p in self.prm.score_encoded(enc, batch_size=16)]

    async def ascore(self, prompt_or_messages, steps: list[str]) -> list[float]:
        return self.score(prompt_or_messages, steps)


def run_its(algo, units: int, problems, task, lm: ServeLM, prm: SharpenPRM | None) -> dict:
    """its_hub's `infer` on each problem in turn: accuracy, tokens per problem, wall seconds."""
    u0, v0, t0 = (lm.usage.prompt_tokens, lm.usage.completion_tokens), prm.tokens if prm else 0, time.perf_counter()
    right = 0
    for p in problems:
        text = extract_content_from_lm_response(algo.infer(lm, [ChatMessage(**m) for m in task.messages(p)], units))
        right += bool(task.verify(p, task.extract(text)))
    n, gen = len(problems), lm.usage.completion_tokens - u0[1]
    return {"accuracy": right / n, "mean_generated_tokens": gen / n,
            "mean_forward_tokens": (lm.usage.prompt_tokens - u0[0] + gen) / n if lm.usage.prompt_tokens > u0[0] else None,
            "mean_verifier_tokens": ((prm.tokens if prm else 0) - v0) / n, "wall_s": time.perf_counter() - t0}


def its_hub_rows(args, server, task, problems, pilot, model_dir: str) -> list[dict]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    chats, prompts = {}, {}
    for p in [*problems, *pilot]:
        msgs = task.messages(p)
        flat = ChatMessages([ChatMessage(**m) for m in msgs]).to_prompt()
        chats[flat] = msgs
        prompts[flat] = (tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), p.question)
    sample_lm = ServeLM(server.url, model_dir, tok, ROLLOUT_TOKENS, chats)
    step_lm = ServeLM(server.url, model_dir, tok, STEP_TOKENS, chats)
    prm = SharpenPRM(args.prm, prompts) if args.prm else None

    def key(text: str):
        return task.vote_key(task.extract(text)) or object()  # no answer: a vote of its own

    def sg() -> StepGeneration:
        return StepGeneration(max_steps=MAX_DEPTH - 1, step_token="\n", stop_token="Answer:",
                              temperature=TEMPERATURE, include_stop_str_in_output=False)

    def beam(units: int):
        width = 2 if units >= 4 else 1
        return BeamSearch(sg(), prm, beam_width=width), units - units % width, f"{units // width} beams x {width}"

    makers = {"self-consistency": (sample_lm, lambda k: (SelfConsistency(key, orchestrator=LMOrchestrator(PARALLEL)),
                                                         k, f"{k} samples"))}
    if prm is not None:
        makers["beam search"] = (step_lm, beam)
        makers["particle filtering"] = (step_lm, lambda k: (ParticleFiltering(sg(), prm), k, f"{k} particles"))
    rows = []
    for name, (lm, make) in makers.items():
        random.seed(0)
        algo, units, _ = make(2)
        per_unit = max(1.0, run_its(algo, units, pilot, task, lm, prm)["mean_generated_tokens"] / units)
        algo, units, label = make(max(1, round(args.budget / per_unit)))
        print(f"its_hub {name}: {per_unit:.1f} tokens per unit -> {label}", flush=True)
        rows.append({"algorithm": f"{name} ({label})", "library": "its_hub",
                     **run_its(algo, units, problems, task, lm, prm)})
    return rows


def sharpen_rows(args, model: str, library: str, out: Path) -> list[dict]:
    from sharpen import api
    from sharpen.search.process import SearchSettings

    walls: list[float] = []

    @contextmanager
    def timer(description: str, total: int):
        t0 = time.perf_counter()
        yield lambda *_: None
        walls.append(time.perf_counter() - t0)

    algos = ["vote"] + ([f"{a}@prm:{args.prm}" for a in ("weighted", "beam", "pf")] if args.prm else [])
    settings = SearchSettings(temperature=TEMPERATURE, step_tokens=STEP_TOKENS, rollout_tokens=ROLLOUT_TOKENS,
                              max_depth=MAX_DEPTH, parallel=PARALLEL)
    results, _ = api.sweep(algos, [args.budget], model=model, n=args.n, settings=settings, task_args=TASK_ARGS,
                           out=out, progress=timer)
    return [{"algorithm": m["algo"] + ("@prm" if m["scorer"] else ""), "library": library, "wall_s": w,
             **{k: m[k] for k in ("accuracy", "mean_generated_tokens", "mean_forward_tokens", "mean_verifier_tokens")}}
            for m, w in zip(results, walls, strict=True)]


def table(rows: list[dict]) -> str:
    def fwd(r: dict) -> str:
        if r["mean_forward_tokens"] is None:
            return "n/a"
        return f"{r['mean_forward_tokens']:.0f}" + (f" + {r['mean_verifier_tokens']:.0f} PRM"
                                                     if r["mean_verifier_tokens"] else "")

    lines = ["| algorithm | library | accuracy | mean generated tokens | mean forward tokens | wall s |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['algorithm']} | {r['library']} | {r['accuracy']:.2f} | {r['mean_generated_tokens']:.0f} | "
              f"{fwd(r)} | {r['wall_s']:.0f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="held-out problems")
    ap.add_argument("--budget", type=int, default=96, help="generated tokens per problem")
    ap.add_argument("--prm", help="a sharpen PRM dir: adds beam search and particle filtering (and weighted)")
    ap.add_argument("--through-server", action="store_true", help="also run sharpen over the same server")
    ap.add_argument("--out", help="output dir (default runs/peers-<time>)")
    args = ap.parse_args()

    from servers import TransformersServer

    from sharpen.api import new_out_dir
    from sharpen.backends.models import resolve_model
    from sharpen.core.tasks import load_task

    out = new_out_dir(args.out, "peers")
    out.mkdir(parents=True, exist_ok=True)
    task = load_task("gym:chain_sum", TASK_ARGS)
    problems, pilot = task.problems("test", args.n), task.problems("train", PILOT)
    model_dir = str(resolve_model("smollm2-135m"))
    server = TransformersServer(model_dir, out / "transformers-serve.log").start()
    try:
        rows = its_hub_rows(args, server, task, problems, pilot, model_dir)
        rows += sharpen_rows(args, "smollm2-135m", "sharpen", out / "sharpen")
        if args.through_server:
            rows += sharpen_rows(args, server.spec, "sharpen (openai: transformers serve)", out / "sharpen-server")
    finally:
        server.stop()
    (out / "peers.json").write_text(json.dumps({"n": args.n, "budget": args.budget, "rows": rows}, indent=1))
    print(f"\nchain_sum, n={args.n}, budget {args.budget} generated tokens/problem, smollm2-135m ({out})\n")
    print(table(rows))


if __name__ == "__main__":
    main()

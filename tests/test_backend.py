from dataclasses import replace

from sharpen.backends.base import SamplingParams, row_seed
from sharpen.backends.hf import HFBackend


def test_batched_sampling_shapes_and_meter(tiny_backend):
    b = tiny_backend
    before = b.meter.snapshot()
    prompts = ["What is 1 + 2?\n", "State the final answer: 9 - 4 - 1 =\n", "hi"]
    outs = b.generate(prompts, SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=1))
    assert [len(o) for o in outs] == [3, 3, 3]
    used = b.meter.snapshot() - before
    assert used.generated_tokens == sum(c.num_tokens for o in outs for c in o)
    assert used.calls >= 1 and used.prompt_tokens > 0
    for o in outs:
        for c in o:
            assert 0 < c.num_tokens <= 12
            assert len(c.token_ids) == c.num_tokens
            assert c.finish_reason in {"answer", "eos", "length"}
            assert c.logprob <= 0.0


def test_seed_reproducible_and_greedy_deterministic(tiny_backend):
    b = tiny_backend
    p = SamplingParams(n=4, temperature=1.0, max_tokens=10, seed=7)
    a = b.generate(["What is 3 + 4?\n"], p)
    c = b.generate(["What is 3 + 4?\n"], p)
    assert [x.token_ids for x in a[0]] == [x.token_ids for x in c[0]]
    g = SamplingParams(n=2, temperature=0.0, max_tokens=10)
    g1, g2 = b.generate(["1 + 1 =", "1 + 1 ="], g)
    assert g1[0].token_ids == g1[1].token_ids == g2[0].token_ids


def test_left_padding_does_not_change_greedy_output(tiny_backend):
    """The same prompt alone or batched beside a much longer one gives the same greedy tokens."""
    b = tiny_backend
    g = SamplingParams(n=1, temperature=0.0, max_tokens=8)
    alone = b.generate(["1 + 1 ="], g)[0][0]
    batched = b.generate(["1 + 1 =", "What is 9 + 9? State the final answer: 9 - 4 - 1 = " * 3], g)[0][0]
    assert alone.token_ids == batched.token_ids
    assert abs(alone.logprob - batched.logprob) < 1e-3


def test_logprob_matches_forward_pass(tiny_backend):
    import torch

    b = tiny_backend
    prompt = "What is 2 + 2?\n"
    c = b.generate([prompt], SamplingParams(n=1, temperature=1.0, max_tokens=6, seed=3))[0][0]
    ids = b.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = torch.tensor([ids + c.token_ids])
    with torch.no_grad():
        lp = torch.log_softmax(b.model(full).logits[0].float(), -1)
    expected = sum(lp[len(ids) - 1 + j, t].item() for j, t in enumerate(c.token_ids))
    assert abs(expected - c.logprob) < 1e-3


def test_step_stop_at_delimiter(tiny_model_dir):
    b = HFBackend(tiny_model_dir, seed=0)
    # a delimiter that every token decodes to something containing: forces a stop after one token
    mask_all = b._delimiter_mask("")
    assert bool(mask_all.all())
    outs = b.generate(["What is"], SamplingParams(n=4, temperature=1.0, max_tokens=20, stop_at="step", delimiter="", seed=0))
    assert all(c.num_tokens == 1 and c.finish_reason in {"step", "eos"} for c in outs[0])
    outs = b.generate(["What is"], SamplingParams(n=6, temperature=1.0, max_tokens=30, stop_at="step", seed=0))
    for c in outs[0]:
        if c.finish_reason == "step":
            assert c.text.endswith("\n") and "\n" not in c.text[:-1]


def test_next_token_logprobs(tiny_backend):
    lp = tiny_backend.next_token_logprobs(["Is it right?", "x"], ["Yes", "No"])
    assert len(lp) == 2 and set(lp[0]) == {"Yes", "No"} and all(v <= 0 for v in lp[0].values())


def test_chat_prompt(tiny_backend):
    p = tiny_backend.chat_prompt([{"role": "user", "content": "hi"}])
    assert p.endswith("<|assistant|>") and "hi" in p


def test_staged_generation_matches_one_pass(tiny_model_dir):
    """Rows that leave the batch early do not change what the others generate."""
    one = HFBackend(tiny_model_dir, seed=0, stage_tokens=1000)
    staged = HFBackend(tiny_model_dir, seed=0, stage_tokens=3)
    prompts = ["What is 1 + 2?\n", "State the final answer: 9 - 4 =\n", "1 +"]
    g = SamplingParams(n=2, temperature=0.0, max_tokens=14)
    a, b = one.generate(prompts, g), staged.generate(prompts, g)
    for x, y in zip(a, b, strict=True):
        for c1, c2 in zip(x, y, strict=True):
            assert c1.token_ids == c2.token_ids and c1.finish_reason == c2.finish_reason
            assert abs(c1.logprob - c2.logprob) < 1e-3
    assert staged.meter.total.generated_tokens == one.meter.total.generated_tokens


def test_shared_prefix_cache_changes_nothing(tiny_model_dir):
    """Rows sharing a long prefix (system prompt, examples) reuse its KV cache: same tokens out."""
    plain = HFBackend(tiny_model_dir, seed=0, prefix_cache=False)
    cached = HFBackend(tiny_model_dir, seed=0, prefix_cache=True)
    shared = "What is 1 + 2?\\n1 + 2 = 3\\nAnswer: 3\\nState the final answer: 4 - 1 =\\n4 - 1 = 3\\n"
    prompts = [shared + "What is 5 + 5?\\n", shared + "7 - 2 =", shared + "What is 3 + 3?\\n3 + 3 = "]
    assert cached.count_tokens(shared) >= 16
    for params in (SamplingParams(n=2, temperature=0.0, max_tokens=10), SamplingParams(n=3, temperature=1.0, max_tokens=10, seed=5)):
        a, b = plain.generate(prompts, params), cached.generate(prompts, params)
        for x, y in zip(a, b, strict=True):
            for c1, c2 in zip(x, y, strict=True):
                assert c1.token_ids == c2.token_ids
                assert abs(c1.logprob - c2.logprob) < 1e-3
    assert cached._prefix_kv  # the prefix was cached


def test_duplicate_rows_prefilled_once_change_nothing(tiny_model_dir):
    """k samples of one prompt are prefilled once and the cache copied out: same tokens and log-probs
    as prefilling every row, with and without a shared prefix across prompts."""
    plain = HFBackend(tiny_model_dir, seed=0, prefix_cache=False)
    dedup = HFBackend(tiny_model_dir, seed=0, prefix_cache=True)
    calls = []
    forward = dedup.model.forward
    dedup.model.forward = lambda *a, **kw: calls.append(kw.get("input_ids", a[0] if a else None).shape) or forward(*a, **kw)
    long = "What is 1 + 2?\\n1 + 2 = 3\\nAnswer: 3\\nState the final answer: 4 - 1 =\\n4 - 1 = 3\\n"
    for prompts in (["7 - 2 =", "What is 3 + 3?\\n3 + 3 = "], [long + "5 + 5 =", long + "9 - 1 ="]):
        for params in (SamplingParams(n=3, temperature=0.0, max_tokens=8), SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=2)):
            calls.clear()
            a, b = plain.generate(prompts, params), dedup.generate(prompts, params)
            for x, y in zip(a, b, strict=True):
                for c1, c2 in zip(x, y, strict=True):
                    assert c1.token_ids == c2.token_ids
                    assert abs(c1.logprob - c2.logprob) < 1e-3 + 1e-4 * abs(c1.logprob)  # batch shape: float noise
            assert any(shape[0] == len(prompts) for shape in calls)  # a prefill ran on the distinct rows only


def test_finished_rows_leave_the_batch_same_tokens_as_generate(tiny_model_dir):
    """The decode loop drops rows that stopped (EOS, step delimiter, answer line) from the batch and
    the KV cache, and still gives HF `generate`'s tokens: the same sampled draws for the rows that
    run on, the same stops, the same log-probabilities up to float noise."""
    hf_generate = HFBackend(tiny_model_dir, seed=0, drop_finished=False, stage_tokens=1000)
    dropping = HFBackend(tiny_model_dir, seed=0, drop_finished=True, stage_tokens=1000)
    sizes: list[int] = []
    forward = dropping.model.forward
    dropping.model.forward = lambda *a, **kw: sizes.append(kw["input_ids"].shape[0]) or forward(*a, **kw)
    prompts = ["What is 1 + 2?\n", "State the final answer: 9 - 4 - 1 =\n", "7 +", "What is 6 + 3?\n6 + 3 = "]
    cases = [
        SamplingParams(n=4, temperature=1.0, max_tokens=20, seed=3),
        SamplingParams(n=3, temperature=0.8, top_p=0.9, max_tokens=16, stop_at="step", seed=11),
        SamplingParams(n=2, temperature=0.0, max_tokens=20),
    ]
    shrank, finishes = False, set()
    for params in cases:
        sizes.clear()
        a, b = hf_generate.generate(prompts, params), dropping.generate(prompts, params)
        for x, y in zip(a, b, strict=True):
            for c1, c2 in zip(x, y, strict=True):
                assert c1.token_ids == c2.token_ids and c1.text == c2.text
                assert c1.finish_reason == c2.finish_reason
                assert abs(c1.logprob - c2.logprob) < 1e-4 + 1e-5 * abs(c1.logprob)
                finishes.add(c1.finish_reason)
        shrank = shrank or min(sizes) < max(sizes)
    assert shrank and len(finishes) > 1  # rows stopped at different points and left the batch early


def test_mixture_sends_a_share_of_step_rows_to_the_other_model(tiny_model_dir, tmp_path):
    """collect.reference_share: each sampled step row goes to one of two models by its own seed (the
    same split however rows are batched); rollouts and log-probs stay the policy's; one meter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sharpen.backends.base import row_seed
    from sharpen.backends.mixture import MixtureBackend

    other_dir = tmp_path / "other"  # the tiny model with other output weights: other texts
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        torch.manual_seed(1)
        model.lm_head.weight.normal_(0, 1)
    model.save_pretrained(other_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other_dir)
    main, other = HFBackend(tiny_model_dir, seed=0), HFBackend(str(other_dir), seed=0)
    mix = MixtureBackend(HFBackend(tiny_model_dir, seed=0), HFBackend(str(other_dir), seed=0), 0.5)
    prompts = ["a b", "c d e"]
    step = SamplingParams(n=8, temperature=1.0, max_tokens=6, stop_at="step")
    out = mix.generate(prompts, step, seeds=[5, 9])
    assert mix.rows["main"] > 0 and mix.rows["other"] > 0 and sum(mix.rows.values()) == 16
    for i, s in enumerate([5, 9]):
        for j in range(8):
            rs = row_seed(s, j)
            alone = (other if mix.to_other(rs) else main).generate([prompts[i]], replace(step, n=1), seeds=[rs])[0][0]
            assert out[i][j].text == alone.text  # the row its model samples alone
    differs = [out[0][j].text != main.generate([prompts[0]], replace(step, n=1), seeds=[row_seed(5, j)])[0][0].text
               for j in range(8) if mix.to_other(row_seed(5, j))]
    assert any(differs)  # the other model's rows are not what the policy would have sampled
    flat = mix.generate([prompts[0]] * 8, replace(step, n=1), seeds=[row_seed(5, j) for j in range(8)])
    assert [r[0].text for r in flat] == [c.text for c in out[0]]  # the lockstep batcher's flattening
    assert mix.meter.snapshot().generated_tokens == sum(c.num_tokens for rows in out + flat for c in rows)
    rollout = SamplingParams(n=4, temperature=1.0, max_tokens=6, stop_at="answer")
    assert [c.text for c in mix.generate(prompts[:1], rollout, seeds=[3])[0]] == \
        [c.text for c in main.generate(prompts[:1], rollout, seeds=[3])[0]]
    assert mix.next_token_logprobs(prompts, ["a"]) == main.next_token_logprobs(prompts, ["a"])
    assert len({c.text for c in out[0]}) > 1


def test_sample_rows_draws_by_probability_never_a_filtered_token_and_alone_as_in_a_batch():
    """The per-row sampler inverts each row's CDF at one draw of the row's own stream: token
    frequencies follow the probabilities, a token of probability 0 (filtered by top-p, say) is never
    drawn, also at the ends of the vocabulary and of a 256-token block, and a row draws the same
    token alone or beside others."""
    import collections

    import torch

    from sharpen.backends.hf_rows import sample_rows

    torch.manual_seed(0)
    vocab = 1000  # not a multiple of the 256-token blocks
    logits = torch.randn(4, vocab) * 2
    logits[1, 10:] = float("-inf")
    logits[2, :] = float("-inf")
    logits[2, vocab - 1] = 0.0  # the only token: the last one
    logits[3, :] = float("-inf")
    logits[3, [255, 256]] = 0.0  # two tokens either side of a block edge
    probs = torch.softmax(logits, dim=-1)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    draws = 3000
    counts = [collections.Counter() for _ in range(4)]
    for _ in range(draws):
        for r, t in enumerate(sample_rows(logits, gens).tolist()):
            counts[r][t] += 1
    for r in range(4):
        assert all(probs[r, t] > 0 for t in counts[r]), f"row {r} drew a token of probability 0"
    assert counts[2] == {vocab - 1: draws}
    assert set(counts[3]) == {255, 256} and abs(counts[3][255] / draws - 0.5) < 0.05
    for r in (0, 1):
        top = probs[r].topk(3)
        for p, t in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            sd = (p * (1 - p) / draws) ** 0.5
            assert abs(counts[r][t] / draws - p) < 5 * sd + 1e-3, (r, t, p, counts[r][t])
    a = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    b = [torch.Generator().manual_seed(6)]
    together = [sample_rows(logits[:3], a)[1].item() for _ in range(50)]
    alone = [sample_rows(logits[1:2], b)[0].item() for _ in range(50)]
    assert together == alone


def test_growing_kv_cache_gives_the_dynamic_caches_logits(tiny_model_dir):
    """The decode loop's cache appends into a buffer with room to spare instead of concatenating:
    the same logits as transformers' DynamicCache over prefill, steps, a buffer growth and a row
    selection."""
    import torch
    from transformers import DynamicCache

    from sharpen.backends.kv_cache import GrowingCache, GrowingLayer

    b = HFBackend(tiny_model_dir, seed=0)
    assert b._growing  # a Llama: every layer's cache is a plain one
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (3, 12))
    outs = []
    for cache in (DynamicCache(), GrowingCache()):
        logits = []
        with torch.inference_mode():
            out = b.model(input_ids=ids, past_key_values=cache, use_cache=True)
            cache, step = out.past_key_values, ids[:, -1:]
            for i in range(GrowingLayer.chunk + 8):  # past the first buffer's spare room
                if i == 5:
                    cache.batch_select_indices(torch.tensor([0, 2]))
                    step = step[[0, 2]]
                out = b.model(input_ids=step, past_key_values=cache, use_cache=True)
                cache, step = out.past_key_values, out.logits[:, -1:].argmax(-1)
                logits.append(out.logits[:, -1])
        outs.append(torch.cat(logits))
        assert cache.get_seq_length() == 12 + GrowingLayer.chunk + 8
    assert isinstance(cache.layers[0], GrowingLayer)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_shared_prefix_attention_is_sdpa_over_the_prefix_and_the_rows_own_keys():
    """Attention over a prefix kept once and each row's own keys equals sdpa over each row's whole
    sequence (the prefix copied into every row): grouped heads, a padding mask, prefill and one step."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from sharpen.backends.kv_cache import PENDING, shared_prefix_attention

    class Module:  # what transformers' attention functions read off the attention module
        num_key_value_groups, is_causal, training = 3, True, False

    torch.manual_seed(0)
    rows, kv_heads, dim, p, s = 5, 2, 16, 7, 6
    pk, pv = torch.randn(1, kv_heads, p, dim), torch.randn(1, kv_heads, p, dim)
    own_k, own_v = torch.randn(rows, kv_heads, s, dim), torch.randn(rows, kv_heads, s, dim)
    full_k, full_v = torch.cat([pk.expand(rows, -1, -1, -1), own_k], 2), torch.cat([pv.expand(rows, -1, -1, -1), own_v], 2)
    for q in (s, 1):  # the rows' own tokens prefilled at once (causal), then one decode step
        query = torch.randn(rows, kv_heads * 3, q, dim)
        visible = torch.ones(rows, 1, q, p + s, dtype=torch.bool)
        visible[..., p : p + s] = torch.arange(s)[None, :] <= torch.arange(s - q, s)[:, None]  # causal
        visible[1, ..., p : p + 2] = False  # row 1: two padding positions after the prefix
        want, _ = sdpa_attention_forward(Module(), query, full_k, full_v, visible, scaling=dim**-0.5)
        PENDING.set((own_k, pk, pv))
        got, _ = shared_prefix_attention(Module(), query, own_k, own_v, visible, scaling=dim**-0.5)
        assert got.shape == want.shape == (rows, q, kv_heads * 3, dim)
        assert torch.allclose(got, want, atol=1e-5)
        assert PENDING.get() is None  # used once
        # no mask at a decode step: every position visible
        if q == 1:
            want, _ = sdpa_attention_forward(Module(), query, full_k, full_v, None, scaling=dim**-0.5)
            PENDING.set((own_k, pk, pv))
            assert torch.allclose(shared_prefix_attention(Module(), query, own_k, own_v, None, scaling=dim**-0.5)[0],
                                  want, atol=1e-5)
    # what it does not compute itself (here a sliding window): sdpa over the prefix copied into every row
    PENDING.set((own_k, pk, pv))
    got, _ = shared_prefix_attention(Module(), query, own_k, own_v, None, scaling=dim**-0.5, sliding_window=64)
    assert torch.allclose(got, sdpa_attention_forward(Module(), query, full_k, full_v, None, scaling=dim**-0.5)[0])
    # keys of any other cache: plain sdpa, whatever was left pending
    PENDING.set((own_k, pk, pv))
    got, _ = shared_prefix_attention(Module(), query, full_k, full_v, None, scaling=dim**-0.5)
    assert torch.allclose(got, sdpa_attention_forward(Module(), query, full_k, full_v, None, scaling=dim**-0.5)[0])


def test_decode_keeps_the_shared_prefix_once_and_gives_the_per_row_caches_tokens(tiny_model_dir):
    """With a prefix of >= 16 tokens the decode loop's KV cache holds it once (SharedPrefixCache:
    each row only its own positions); tokens, stops and log-probabilities are those of the cache that
    copies the prefix into every row, sampled and greedy, across stage boundaries and rows leaving."""
    from sharpen.backends.kv_cache import SharedPrefixCache

    shared = HFBackend(tiny_model_dir, seed=0, stage_tokens=4)
    per_row = HFBackend(tiny_model_dir, seed=0, stage_tokens=4)
    per_row.share_prefix = False
    assert shared._shares_prefix()  # checked once against the plain cache: it passes on this model
    caches = []
    forward = shared.model.forward
    shared.model.forward = lambda *a, **kw: caches.append(kw.get("cache", kw.get("past_key_values"))) or forward(*a, **kw)
    long = "What is 1 + 2?\n1 + 2 = 3\nAnswer: 3\nState the final answer: 4 - 1 =\n4 - 1 = 3\n"
    prompts = [long + "5 + 5 =", long + "What is 9 - 1?\n", long + "2 + 2 ="]
    assert shared.count_tokens(long) >= 16
    for params in (SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=3),
                   SamplingParams(n=2, temperature=0.0, max_tokens=12),
                   SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=4, stop_at="step")):
        a, b = shared.generate(prompts, params), per_row.generate(prompts, params)
        for x, y in zip(a, b, strict=True):
            for c1, c2 in zip(x, y, strict=True):
                assert c1.token_ids == c2.token_ids and c1.finish_reason == c2.finish_reason
                assert abs(c1.logprob - c2.logprob) < 1e-3 + 1e-4 * abs(c1.logprob)
    used = [c for c in caches if isinstance(c, SharedPrefixCache)]
    assert used, "the decode loop never used the shared-prefix cache"
    prefix = shared.count_tokens(long) - 1
    for c in used:
        layer = c.layers[0]
        assert layer.prefix_keys.shape[0] == 1 and layer.prefix_keys.shape[-2] >= prefix - 1
        assert c.get_seq_length() == layer.prefix_keys.shape[-2] + layer._own_length()
    assert shared.model.config._attn_implementation == "sdpa"  # set back after each call
    assert HFBackend(tiny_model_dir, seed=0, dtype="bfloat16")._shares_prefix()  # the check allows 16-bit rounding


def test_continuous_decode_rows_join_mid_decode_and_get_generates_tokens(tiny_model_dir):
    """`HFBackend.continuous` (sharpen serve's row-level continuous batching): calls that arrive while
    others decode join the running batch, each call is handed back once its own rows are done, and
    every row gets the tokens, stop and log-probability `generate` gives it for the same seed."""
    from sharpen.backends.hf_continuous import RowJob

    plain = HFBackend(tiny_model_dir, seed=0, stage_tokens=1000)
    joined = HFBackend(tiny_model_dir, seed=0, max_batch=64)
    joined.max_wait = 2
    sizes: list[int] = []
    forward = joined.model.forward
    joined.model.forward = lambda *a, **kw: sizes.append(kw["input_ids"].shape) or forward(*a, **kw)
    long = "What is 1 + 2?\n1 + 2 = 3\nAnswer: 3\nState the final answer: 4 - 1 =\n4 - 1 = 3\n"
    calls = [  # (prompt, samples, max_tokens, seed), arriving one per decode step after the first two
        (long + "What is 5 + 5?\n", 4, 20, 1), ("7 +", 3, 12, 2), (long + "9 - 1 =", 2, 20, 3),
        ("What is 6 + 3?\n6 + 3 = ", 3, 6, 4), (long + "2 + 2 =", 1, 20, 5),
    ]
    overtaken = False
    for params in (SamplingParams(temperature=1.0, top_p=0.9), SamplingParams(temperature=0.0),
                   SamplingParams(temperature=0.8, stop_at="step")):
        jobs = [RowJob([p] * n, [row_seed(s, j) for j in range(n)], m, token=i) for i, (p, n, m, s) in enumerate(calls)]
        arrivals = jobs[2:]
        got: dict[int, list] = {}
        order: list[int] = []

        def admit(arrivals=arrivals):
            return [arrivals.pop(0)] if arrivals else []

        def deliver(job, completions, prompt_tokens, seconds, got=got, order=order):
            assert prompt_tokens > 0 and seconds >= 0
            got[job.token] = completions
            order.append(job.token)

        sizes.clear()
        joined.continuous(params, jobs[:2], admit, deliver)
        assert sorted(got) == list(range(len(calls)))
        for i, (p, n, m, s) in enumerate(calls):
            want = plain.generate([p], replace(params, n=n, max_tokens=m), seeds=[s])[0]
            for c1, c2 in zip(want, got[i], strict=True):
                assert c1.token_ids == c2.token_ids and c1.text == c2.text and c1.finish_reason == c2.finish_reason
                assert abs(c1.logprob - c2.logprob) < 1e-4 + 1e-5 * abs(c1.logprob)
        decode = [shape[0] for shape in sizes if shape[1] == 1]
        assert max(decode) > 7  # later calls' rows decoded beside the first two calls' 7
        overtaken = overtaken or order != sorted(order)
    assert overtaken  # a later call was handed back before an earlier one: no call waits for the slowest row


def test_a_long_continuous_decode_keeps_stop_state_for_its_live_rows_only(tiny_model_dir):
    """A continuous decode that runs as long as calls keep arriving (`sharpen serve`) holds per-row
    stop state for the rows in its batch, not for every row it ever decoded."""
    from sharpen.backends.hf_continuous import RowJob

    backend = HFBackend(tiny_model_dir, seed=0, max_batch=8)
    backend.max_wait = 1
    held: list[int] = []
    rebuild = backend._continuous_rebuild

    def watched(rows, cache, mask, take, stop):
        out = rebuild(rows, cache, mask, take, stop)
        held.append(len(stop.prefixes))
        return out

    backend._continuous_rebuild = watched
    jobs = [RowJob(["What is 1 + 2?\n"] * 2, [row_seed(i, j) for j in range(2)], 4, token=i) for i in range(40)]
    arrivals = jobs[1:]
    got: list[int] = []
    backend.continuous(SamplingParams(temperature=1.0, stop_at="step"), jobs[:1],
                       lambda: [arrivals.pop(0)] if arrivals else [], lambda job, *_: got.append(job.token))
    assert sorted(got) == list(range(40))
    assert max(held) <= backend.max_batch  # 80 rows decoded, never more than a batch's worth of stop state


def test_a_process_remembers_a_bounded_number_of_problems(tiny_model_dir):
    """Each `new_tree` registers its problem for `process.problem(tree)`; a long-lived process keeps the
    most recently used ones only (far more than the searches in flight), so memory stays flat."""
    from sharpen.core.tasks import Problem, load_task
    from sharpen.search.process import PROBLEMS_KEPT, LMProcess

    process = LMProcess(HFBackend(tiny_model_dir, seed=0), load_task("gym:chain_sum", {}))
    first = process.new_tree(Problem("p0", "What is 1 + 2?", "3"))
    for i in range(1, PROBLEMS_KEPT + 500):
        tree = process.new_tree(Problem(f"p{i}", "What is 1 + 2?", "3"))
        if i % 1000 == 0:
            process.problem(first)  # in use: kept
    assert len(process._problems) == PROBLEMS_KEPT
    assert process.problem(first).id == "p0" and process.problem(tree).id == tree.problem_id

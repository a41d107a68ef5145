"""Shared fixtures. `tiny_model_dir`: a tiny randomly initialised llama with a tokenizer trained
offline in the test, saved like any HF model directory, so every layer runs fast without weights
from the network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _corpus() -> list[str]:
    lines = []
    for a in range(10):
        for b in range(10):
            lines.append(f"What is {a} + {b}?\n{a} + {b} = {a + b}\nAnswer: {a + b}\n")
            lines.append(f"State the final answer: {a} - {b} =\n{a} - {b} = {a - b}\nAnswer: {a - b}\n")
    return lines


def build_tiny_model(path: str, seed: int = 0) -> str:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>", chat_template=CHAT_TEMPLATE
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def changed_tensors(start: str, trained: str) -> list[str]:
    """Names of `start`'s tensors (safetensors weights) that `trained` holds with other values."""
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    def weights(path: str) -> dict:
        out: dict = {}
        for f in sorted(Path(path).glob("*.safetensors")):
            out |= load_file(str(f))
        return out

    a, b = weights(start), weights(trained)
    assert a and set(a) <= set(b), (start, trained)
    return [k for k in a if not torch.equal(a[k], b[k])]


def random_prm(out_dir, tokenizer_dir: str, seed: int = 0) -> str:
    """An untrained two-label token classifier with the tiny model's tokenizer, saved as `out_dir/merged`
    (what `prm:<out_dir>` loads): a PRM to exercise scoring code, not to judge steps."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForTokenClassification

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=2, pad_token_id=tok.pad_token_id)
    LlamaForTokenClassification(cfg).save_pretrained(f"{out_dir}/merged")
    tok.save_pretrained(f"{out_dir}/merged")
    return str(out_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir):
    from sharpen.backends.hf import HFBackend

    return HFBackend(tiny_model_dir, seed=0, max_batch=8)


def assert_same_tree(a, b, path="tree"):
    """Equal structure, text, token ids, counts and choices; floats (log-probs, scores) equal up to
    1e-5: a batched forward pass rounds differently from a lone one (CPU kernels split their sums
    by shape), by about 1e-7 here, and that is not a different tree."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-5), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


TINY_DIGITS = {"steps": 60, "batch": 32, "channels": (8, 16), "norm_groups": 4}
"""A digits-ddpm small enough to train in seconds (`prepare_digits` settings)."""


@pytest.fixture(scope="session")
def tiny_digits_dir(tmp_path_factory):
    """One tiny digits-ddpm for the whole session (tests copy it before changing it)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("sklearn")
    from sharpen.backends.diffusion import prepare_digits

    return prepare_digits(tmp_path_factory.mktemp("ddpm") / "digits-ddpm", **TINY_DIGITS)


def user_pipeline(digits_dir, out, scheduler: str = "DDIMScheduler", **scheduler_changes):
    """A user's own diffusers pipeline as `save_pretrained` writes it: the UNet of a prepared
    digits-ddpm and its training schedule under another scheduler class (DDIM by default), without
    the digits rewards (no classifier.json)."""
    import json
    from pathlib import Path

    import diffusers

    config = json.loads((Path(digits_dir) / "scheduler" / "scheduler_config.json").read_text())
    sched = getattr(diffusers, scheduler).from_config({**config, **scheduler_changes})
    unet = diffusers.UNet2DModel.from_pretrained(Path(digits_dir) / "unet")
    pipe = diffusers.DDIMPipeline if scheduler == "DDIMScheduler" else diffusers.DDPMPipeline
    pipe(unet=unet, scheduler=sched).save_pretrained(out)
    return Path(out)


def rgb_pipeline(out):
    """A diffusers pipeline of 3x16x16 images (an untrained UNet): not one the digits rewards can read."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(out)
    return out

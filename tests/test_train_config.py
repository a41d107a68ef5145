"""One description of training options: every trainer config is TRL's (or transformers') config
class with sharpen's fields mixed in, and the CLI, run configs and the API set its fields by name."""

import pytest
from transformers import TrainingArguments
from trl import DPOConfig, SFTConfig

from sharpen.core.errors import ConfigError
from sharpen.loop.config import validate
from sharpen.train import TRAINERS, config_class, get_trainer, make_config


def test_trainer_configs_are_trl_configs():
    assert issubclass(config_class("dpo"), DPOConfig)
    assert issubclass(config_class("sft"), SFTConfig)
    assert issubclass(config_class("prm"), TrainingArguments)
    cfg = make_config("dpo", model="m", output_dir="o", sft_weight=0.5, warmup_steps=0.1, lr_scheduler_type="cosine")
    assert cfg.loss_type == ["sigmoid", "sft"] and cfg.loss_weights == [1.0, 0.5]
    assert cfg.warmup_steps == 0.1 and cfg.lr_scheduler_type == "cosine" and cfg.gradient_checkpointing in (None, False)
    assert make_config("prm", model="m", output_dir="o").learning_rate == 1e-4


def test_one_trainer_table():
    import sharpen.train.dpo
    import sharpen.train.grpo
    import sharpen.train.prm
    import sharpen.train.sft

    assert set(TRAINERS) == {"dpo", "sft", "grpo", "prm"}
    assert get_trainer("grpo").config is sharpen.train.grpo.GRPOTrainConfig
    for kind, trainer in TRAINERS.items():
        module = getattr(sharpen.train, kind)
        assert config_class(kind) is trainer.config and trainer.config.__module__ == module.__name__
        assert callable(getattr(module, trainer.train_name))
    assert [k for k, t in TRAINERS.items() if not t.needs_data] == ["grpo"]
    with pytest.raises(ConfigError, match="unknown trainer 'ppo'"):
        get_trainer("ppo")


def test_importing_the_trainer_table_loads_no_torch():
    import subprocess
    import sys

    code = "import sys, sharpen.train; print('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("options, match", [
    ({"lora_rr": 4}, "did you mean lora_r"),
    ({"batch_size": 4}, "per_device_train_batch_size"),
    ({"learning_rate": "fast"}, "learning_rate='fast'"),
    ({"lr_scheduler_type": "bogus"}, "SchedulerType"),
])
def test_bad_trainer_options_are_one_line_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        make_config("dpo", model="m", output_dir="o", **options)


def test_run_config_train_section_takes_trl_fields_and_checks_them_at_load():
    cfg = validate({"train": {"max_steps": 3, "warmup_steps": 0.1, "lora_r": 4, "replay": True, "max_epochs": 2}})
    assert cfg.train.options == {"max_steps": 3, "warmup_steps": 0.1, "lora_r": 4} and cfg.train.replay
    with pytest.raises(ConfigError, match="train: unknown dpo trainer option 'betta'.*beta"):
        validate({"train": {"betta": 0.2}})
    with pytest.raises(ConfigError, match="unknown sft trainer option 'beta'"):
        validate({"recipe": "rft", "train": {"beta": 0.2}})  # SFT has no beta
    with pytest.raises(ConfigError, match="train.seed is not set in a run config"):
        validate({"train": {"seed": 3}})
    validate({"train": {"precompute_ref_log_probs": "auto"}})


def test_run_config_options_reach_the_trainer(tiny_model_dir, tmp_path):
    """A TRL field in the `train` section arrives in the TRL config the round trains with."""
    from sharpen.loop.config import trainer_options

    cfg = validate({"train": {"max_steps": 2, "lr_scheduler_type": "cosine", "lora_alpha": 8}})
    opts = trainer_options(cfg, "dpo")
    made = make_config("dpo", model=tiny_model_dir, output_dir=str(tmp_path), **opts)
    assert made.lr_scheduler_type == "cosine" and made.peft_config().lora_alpha == 8


def test_a_run_config_refuses_a_server_model():
    with pytest.raises(ConfigError, match="needs its weights here"):
        validate({"model": "openai:http://127.0.0.1:8000/v1#m"})

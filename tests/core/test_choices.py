"""Typed choices: Literal values checked in one place, with messages naming the field."""

from typing import Literal

import pytest

from isheep_jax.core import choices
from isheep_jax.loop.runner import LoopConfig
from isheep_jax.model.config import ConfigError, ModelConfig
from isheep_jax.model.tokenizer import BUILTIN_TEMPLATES, PromptStyle
from isheep_jax.training.optim import OptimizerConfig

Color = Literal["red", "green"]


def test_check_accepts_the_values_and_names_field_and_choices_otherwise():
    assert choices.values(Color) == ("red", "green")
    choices.check("Paint", "color", "green", Color)
    with pytest.raises(ValueError, match=r"Paint.color must be one of \('red', 'green'\), got 'blue'"):
        choices.check("Paint", "color", "blue", Color)
    with pytest.raises(TypeError, match="not a Literal"):
        choices.values(str)


def test_configs_refuse_values_outside_their_choices():
    with pytest.raises(ValueError, match="LoopConfig.train_data must be one of"):
        LoopConfig(base_model="m", train_data="everything")
    with pytest.raises(ValueError, match="LoopConfig.tuned_prompt_style must be one of"):
        LoopConfig(base_model="m", tuned_prompt_style="alpaca")
    with pytest.raises(ValueError, match="OptimizerConfig.schedule must be one of"):
        OptimizerConfig(schedule="step")
    tiny = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
                head_dim=8)  # fmt: skip
    with pytest.raises(ConfigError, match="ModelConfig.remat_policy must be one of"):
        ModelConfig(**tiny, remat_policy="some")


def test_prompt_styles_are_raw_chat_and_the_builtin_templates():
    assert set(choices.values(PromptStyle)) == {"raw", "chat", *BUILTIN_TEMPLATES}

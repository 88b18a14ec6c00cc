"""The config: unknown keys and wrong types fail with file:line; --set overrides; defaults written out."""

from __future__ import annotations

import pydantic
import pytest
import yaml

from tunesmith.config import Config, config_to_yaml, load_config
from tunesmith.errors import UserError


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_fills_every_default(tmp_path):
    config = load_config(write(tmp_path, "data:\n  train: a.jsonl\n"))
    assert config.model.name == "smollm2-135m-instruct"
    assert config.template.train_on == "assistant"
    dumped = yaml.safe_load(config_to_yaml(config))
    assert dumped["train"]["learning_rate"] == config.train.learning_rate
    assert Config.model_validate(dumped).model_dump() == config.model_dump()  # reads back identically


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path, "data:\n  train: a.jsonl\ntrain:\n  epochs: 2\n  learnig_rate: 0.1\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:5: train.learnig_rate: unknown key (did you mean learning_rate?)")


def test_wrong_type_names_line_and_value(tmp_path):
    path = write(tmp_path, "data:\n  train: a.jsonl\ntrain:\n  epochs: lots\n")
    with pytest.raises(UserError, match=rf"^{path}:4: train.epochs: .*'lots'"):
        load_config(path)


def test_missing_required_section(tmp_path):
    with pytest.raises(UserError, match=r"data: required key is missing"):
        load_config(write(tmp_path, "train:\n  epochs: 1\n"))


def test_invalid_yaml_has_a_line(tmp_path):
    with pytest.raises(UserError, match=r"run.yaml:\d+: invalid YAML"):
        load_config(write(tmp_path, "data:\n  train: a.jsonl\n  test: [unclosed\n"))


def test_missing_file():
    with pytest.raises(UserError, match="config file not found: nowhere.yaml"):
        load_config("nowhere.yaml")


def test_set_overrides_are_typed_and_win(tmp_path):
    path = write(tmp_path, "data:\n  train: a.jsonl\ntrain:\n  epochs: 2\n")
    config = load_config(path, ["train.epochs=3", "lora.target_modules=[q_proj, v_proj]", "name=exp"])
    assert config.train.epochs == 3.0
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.name == "exp"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.epoch=3", "unknown key train.epoch (did you mean train.epochs?)"),
        ("train.epochs", "expected section.key=value"),
        ("train.epochs=-1", "--set train.epochs=-1: train.epochs: Input should be greater than 0"),
        ("name.x=1", "name has no sub-keys"),
    ],
)
def test_bad_overrides(tmp_path, item, message):
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, "data:\n  train: a.jsonl\n"), [item])
    assert message in str(err.value)


def test_config_is_frozen(tmp_path):
    config = load_config(write(tmp_path, "data:\n  train: a.jsonl\n"))
    with pytest.raises(pydantic.ValidationError):
        config.train.epochs = 5  # type: ignore[misc]


def test_column_and_role_names_match_what_the_adapters_know():
    import typing

    from tunesmith.config.schema import ColumnKey, RoleName
    from tunesmith.data.options import CANONICAL_KEYS
    from tunesmith.data.types import ROLES

    assert set(typing.get_args(ColumnKey)) == set(CANONICAL_KEYS)
    assert set(typing.get_args(RoleName)) == {*ROLES, "function_call"}


def test_unknown_column_key_is_a_config_error_with_a_line(tmp_path):
    path = write(tmp_path, "data:\n  train: a.csv\n  columns:\n    instrucion: task\n")
    with pytest.raises(UserError, match=rf"^{path}:4: data.columns.instrucion:"):
        load_config(path)

"""Training settings chosen from the data (training/defaults.py): enough optimizer steps for a
few dozen rows, the usual settings for a large set, the config's own settings kept, and a warning
for a run too short to learn."""

from __future__ import annotations

import pytest

from tunesmith.config import load_config
from tunesmith.training.defaults import FEW_STEPS, MIN_STEPS_PER_EPOCH, choose, settled


def _config(*extra: str):
    return load_config(None, ["data.train=a.jsonl", "template.max_length=1024", *extra])


def _by_setting(schedule) -> dict:
    return {c.setting: c.value for c in schedule.chosen}


def test_forty_short_rows_train_one_per_step_for_several_epochs_at_a_higher_rate():
    config, schedule = choose(_config(), [60] * 40)
    chosen = settled(config)
    assert chosen.packing == "none"  # 40 rows of 60 tokens fill 3 bins: packing would make 3 steps
    assert chosen.batch_size == 1
    assert schedule.steps_per_epoch == 40 and chosen.epochs == 2.0 and schedule.total_steps == 80
    assert 2e-4 < chosen.learning_rate <= 1e-3
    assert schedule.warning is None
    assert set(_by_setting(schedule)) == {"train.packing", "train.batch_size", "train.epochs", "train.learning_rate"}
    assert all(c.reason for c in schedule.chosen)


def test_a_large_set_packs_in_bins_of_eight_for_one_epoch():
    config, schedule = choose(_config(), [250] * 20_000)
    chosen = settled(config)
    assert chosen.packing == "bins" and chosen.batch_size == 8 and chosen.epochs == 1.0
    assert schedule.unit == "bins" and schedule.units == 5_000
    assert chosen.learning_rate == pytest.approx(2e-4 * (1000 / schedule.total_steps) ** 0.5, rel=0.01)


def test_the_configs_own_settings_are_kept_and_only_the_rest_chosen():
    config, schedule = choose(_config("train.batch_size=4", "train.learning_rate=3e-4"), [100] * 400)
    chosen = settled(config)
    assert chosen.batch_size == 4 and chosen.learning_rate == 3e-4
    assert "train.batch_size" not in _by_setting(schedule) and "train.learning_rate" not in _by_setting(schedule)
    assert schedule.steps_per_epoch >= 1


def test_batch_size_gives_at_least_the_minimum_steps_an_epoch_when_the_data_allows():
    for rows in (64, 100, 300, 1000):
        config, schedule = choose(_config("train.packing=none"), [50] * rows)
        assert schedule.steps_per_epoch >= MIN_STEPS_PER_EPOCH
        assert settled(config).batch_size <= 8


def test_max_steps_decides_the_length_and_epochs_are_not_chosen():
    config, schedule = choose(_config("train.max_steps=25"), [60] * 40)
    assert schedule.total_steps == 25 and "train.epochs" not in _by_setting(schedule)


def test_a_run_with_too_few_steps_is_warned_about_even_with_explicit_settings():
    _, schedule = choose(_config("train.batch_size=8", "train.epochs=1", "train.packing=bins"), [60] * 80)
    assert schedule.total_steps < FEW_STEPS
    assert "only 1 optimizer steps" in schedule.warning and "train.batch_size" in schedule.warning


def test_a_full_fine_tune_and_preference_objectives_get_smaller_rates():
    lora = settled(choose(_config(), [60] * 40)[0]).learning_rate
    full = settled(choose(_config("method=full"), [60] * 40)[0]).learning_rate
    dpo = settled(choose(_config("train.objective=dpo"), [1] * 40)[0]).learning_rate
    assert full == pytest.approx(lora / 10, rel=0.01) and dpo == 5e-5


def test_code_after_prepare_refuses_an_unchosen_setting():
    with pytest.raises(RuntimeError, match="not chosen"):
        settled(_config())


def test_the_schedule_is_recorded_as_json():
    _, schedule = choose(_config(), [60] * 40)
    record = schedule.to_json()
    assert record["optimizer_steps"] == 80 and record["chosen"][0]["setting"] == "train.packing"

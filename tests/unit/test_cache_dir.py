"""One cache folder (tunesmith.paths.cache_root), used by every part that caches: the embedded
model, processed data, remote wheels, and `tunesmith doctor`'s free-disk report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def _users(monkeypatch):
    """{what: the folder it uses now} for every part of tunesmith that keeps things in the cache."""
    from tunesmith.formatting import cache as data_cache
    from tunesmith.models import embedded
    from tunesmith.plan import doctor
    from tunesmith.remote import env as remote_env

    asked: list[Path] = []
    real = shutil.disk_usage

    def disk_usage(path):
        asked.append(Path(path))
        return real(path)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    facts = doctor.diagnose(None)
    used = {
        "models": embedded.models_dir().parent,
        "data": data_cache.cache_dir().parent,
        "remote": remote_env.cache_dir().parent,
        "doctor": asked[0],
    }  # the first folder doctor measures
    if "cache_dir" in facts:  # and the folder it names
        used["doctor_reported"] = Path(facts["cache_dir"])
    return used


@pytest.fixture()
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("TUNESMITH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _everyone_uses(monkeypatch, expected: Path):
    expected.mkdir(parents=True, exist_ok=True)  # doctor measures the nearest existing folder
    used = _users(monkeypatch)
    assert used == dict.fromkeys(used, expected), used
    assert "doctor_reported" in used


def test_tunesmith_cache_wins_over_xdg(clean_env, monkeypatch):
    monkeypatch.setenv("TUNESMITH_CACHE", str(clean_env / "ts"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_env / "xdg"))
    _everyone_uses(monkeypatch, clean_env / "ts")


def test_xdg_cache_home_is_used_by_every_part(clean_env, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_env / "xdg"))
    _everyone_uses(monkeypatch, clean_env / "xdg" / "tunesmith")


def test_home_cache_when_neither_is_set(clean_env, monkeypatch):
    _everyone_uses(monkeypatch, clean_env / "home" / ".cache" / "tunesmith")


def test_relative_xdg_cache_home_and_empty_values_are_ignored(clean_env, monkeypatch):
    from tunesmith.paths import cache_root

    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: a relative path is invalid, ignore it
    monkeypatch.setenv("TUNESMITH_CACHE", "")
    assert cache_root() == clean_env / "home" / ".cache" / "tunesmith"
    monkeypatch.setenv("TUNESMITH_CACHE", "~/ts-cache")
    assert cache_root() == clean_env / "home" / "ts-cache"

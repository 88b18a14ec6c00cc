"""Wheels for `make gpu-check` on a GPU machine that reaches no package registry (this workplace's
lent H200: an image with Python 3.12, PyTorch 2.11+cu130, Triton, accelerate, safetensors; nothing can
be fetched there, and at most 64 MiB travel with the working tree).

    python scripts/gpu_wheels.py .gpu-wheels      # here, where the registry answers

downloads, without dependencies, what tunesmith, TRL and Liger need beyond that image, for CPython
3.12 on x86-64 Linux, and trims bitsandbytes' wheel to its CPU and CUDA 13 libraries (the full wheel
carries one library per CUDA version: 43 MB of the limit; trimmed, about 3 MB). `make gpu-check-offline`
installs them there with `--no-index --no-deps`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

WHEELS = [
    "transformers==5.23.0",
    "peft==0.21.2",
    "trl==1.16.0",
    "bitsandbytes==0.50.2",
    "liger-kernel==0.8.5",
    "pydantic==2.14.3",
    "pydantic-core==2.50.4",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "datasets==5.2.0",
    "dill==0.4.1",
    "multiprocess==0.70.19",
    "gguf==0.19.0",
    "tokenizers==0.23.3",
    "rich==15.0.0",
]
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_28_x86_64"]
KEEP_CUDA = re.compile(r"libbitsandbytes_cuda13\d\.so$")
DROP = re.compile(r"libbitsandbytes_(cuda|rocm)\d+\.so$")


def trim_bitsandbytes(wheel: Path) -> Path:
    """Rewrite `wheel` in place without the GPU libraries for other CUDA and ROCm versions; the RECORD
    loses their lines (the kept files' hashes stay right). Returns the wheel."""
    trimmed = wheel.with_suffix(".trimmed")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as target:
        dropped = {n for n in source.namelist() if DROP.search(n) and not KEEP_CUDA.search(n)}
        for item in source.infolist():
            if item.filename in dropped:
                continue
            data = source.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = [line for line in data.decode().splitlines() if line.split(",")[0] not in dropped]
                data = ("\n".join(lines) + "\n").encode()
            target.writestr(item, data)
    trimmed.replace(wheel)
    return wheel


def download(folder: Path, specs: list[str] = WHEELS) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [part for p in PLATFORMS for part in ("--platform", p)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            *platforms,
            "-d",
            str(folder),
            *specs,
        ],
        check=True,
    )
    for wheel in folder.glob("bitsandbytes-*.whl"):
        trim_bitsandbytes(wheel)
    return sorted(folder.glob("*.whl"))


def main() -> int:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu-wheels")
    wheels = download(folder)
    size = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels in {folder} ({size / 2**20:.1f} MiB); carry it and run `make gpu-check-offline`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""llama.cpp's own quantizer for the k-quants and the other types tunesmith does not write itself.

From the checked f16 GGUF, one of two ways, both llama.cpp's own code: `llama_model_quantize`
through llama-cpp-python (`pip install 'tunesmith[gguf]'`, `make llamacpp` in a checkout), run in a
child process (`python -m tunesmith.export.quantize`) so llama.cpp's logging and any abort stay out
of ours; or the `llama-quantize` binary on PATH when llama-cpp-python is not installed.

An importance matrix (`--imatrix FILE`, made by llama.cpp's `llama-imatrix`) is read here and handed
to llama.cpp as the array of `llama_model_imatrix_data` its C API takes, with each value divided by
its count as `llama-quantize` does. Its entries are checked against the model's tensors first: an
imatrix made for another model is refused in one line, before llama.cpp would abort on it. The
legacy `.dat` format goes through `llama-quantize` only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UserError

QUANTIZE_TYPES = (
    "q2_k",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_0",
    "q4_1",
    "q4_k_s",
    "q4_k_m",
    "q5_0",
    "q5_1",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
    "iq4_nl",
    "iq4_xs",
)
"""Each is llama.cpp's LLAMA_FTYPE_MOSTLY_<TYPE> and `llama-quantize`'s <TYPE>, from an f16 file."""

_HOW_TO_GET = (
    "install llama.cpp's quantizer: pip install 'tunesmith[gguf]' (builds llama-cpp-python; "
    "`make llamacpp` in a tunesmith checkout), or put llama-quantize on PATH (brew install llama.cpp, "
    "or a release from https://github.com/ggml-org/llama.cpp/releases)"
)
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Quantizer:
    binary: str | None = None
    """llama-quantize's path; None: llama-cpp-python's `llama_model_quantize`."""
    imatrix: Path | None = None

    def describe(self) -> str:
        how = f"{self.binary}" if self.binary else "llama.cpp's llama_model_quantize (llama-cpp-python)"
        return how + (f" with the importance matrix {self.imatrix.name}" if self.imatrix else "")


def has_python_quantizer() -> bool:
    """llama-cpp-python is installed (found, not imported: importing loads llama.cpp)."""
    return importlib.util.find_spec("llama_cpp") is not None


def find_quantizer(out_type: str, imatrix: Path | None = None) -> Quantizer:
    """The quantizer for `out_type`, or a UserError naming how to get one; nothing is run. An
    importance matrix is read and checked here (its entries against the model come later)."""
    binary = shutil.which("llama-quantize")
    legacy = False
    if imatrix is not None:
        imatrix = Path(imatrix)
        legacy = _is_legacy(imatrix)
        if not legacy:
            read_imatrix(imatrix)
        elif binary is None:
            raise UserError(
                f"--imatrix {imatrix}: the legacy .dat format is read by llama-quantize only, and it is not on PATH; "
                f"convert it to GGUF with llama.cpp's `llama-imatrix --in-file {imatrix.name} -o imatrix.gguf`"
            )
    if has_python_quantizer() and not legacy:
        return Quantizer(None, imatrix)
    if binary is not None:
        return Quantizer(binary, imatrix)
    raise UserError(
        f"--type {out_type} needs llama.cpp's quantizer, and none is here: {_HOW_TO_GET}; "
        "or export --type f16, bf16 or q8_0, which need nothing else"
    )


def _is_legacy(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) != _GGUF_MAGIC
    except FileNotFoundError:
        raise UserError(f"--imatrix {path}: file not found") from None
    except OSError as err:
        raise UserError(f"--imatrix {path}: cannot be read ({err.strerror})") from None


def read_imatrix(path: Path) -> dict[str, Any]:
    """The importance of each tensor's columns as llama.cpp's quantizer takes it: name -> float32
    array of `in_sum2 / count` per expert (1 where a count is 0), from a GGUF imatrix."""
    import gguf
    import numpy as np

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - any parse failure is the file's fault
        raise UserError(f"--imatrix {path}: not a readable GGUF importance matrix ({err})") from None
    missing = [k for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size") if k not in reader.fields]
    if missing:
        raise UserError(f"--imatrix {path}: no {', '.join(missing)}: not an importance matrix written by llama-imatrix")
    sums: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    for tensor in reader.tensors:
        for suffix, into in ((".in_sum2", sums), (".counts", counts)):
            if tensor.name.endswith(suffix):
                if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
                    raise UserError(f"--imatrix {path}: {tensor.name} is not F32")
                into[tensor.name[: -len(suffix)]] = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    if not sums or set(sums) != set(counts):
        unpaired = sorted(set(sums) ^ set(counts))[:3]
        raise UserError(
            f"--imatrix {path}: no importance data" + (f" (unpaired: {', '.join(unpaired)})" if unpaired else "")
        )
    entries = {}
    for name, total in sums.items():
        count = counts[name]
        if count.size == 0 or total.size % count.size:
            raise UserError(f"--imatrix {path}: {name} has {total.size} sums for {count.size} counts")
        per_expert = total.reshape(count.size, -1)
        values = np.where(count[:, None] > 0, per_expert / np.maximum(count[:, None], 1), 1.0).astype(np.float32)
        if not np.isfinite(values).all():
            raise UserError(f"--imatrix {path}: {name} holds non-finite values")
        entries[name] = np.ascontiguousarray(values.reshape(-1))
    return entries


def check_imatrix_fits(path: Path, gguf_path: Path) -> int:
    """How many of the imatrix's entries name a tensor of the GGUF; UserError when none does or one
    has the wrong width (an importance matrix made for another model)."""
    import gguf

    columns = {
        t.name: int(t.shape[0]) * (int(t.shape[2]) if len(t.shape) > 2 else 1)
        for t in gguf.GGUFReader(str(gguf_path)).tensors
    }
    entries = read_imatrix(path)
    matched = 0
    for name, values in entries.items():
        if name in columns:
            if values.size != columns[name]:
                raise UserError(
                    f"--imatrix {path}: made for another model: {name} has {values.size} values, "
                    f"this model's tensor has {columns[name]} columns"
                )
            matched += 1
    if matched == 0:
        raise UserError(
            f"--imatrix {path}: made for another model: none of its {len(entries)} entries names a tensor of this one"
        )
    return matched


def quantize(
    quantizer: Quantizer,
    source: Path,
    target: Path,
    out_type: str,
    log: Callable[[str], None],
    overrides: Sequence[tuple[str, str]] = (),
) -> None:
    """Write `target` (`out_type`) from the f16 GGUF `source`; `overrides`: (tensor name regex, type)
    pairs llama.cpp applies before its own choice (llama-quantize's --tensor-type)."""
    name = out_type.upper()
    threads = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    imatrix = quantizer.imatrix
    if imatrix is not None and not _is_legacy(imatrix) and not overrides:
        matched = check_imatrix_fits(imatrix, source)
        log(f"importance matrix {imatrix.name}: {matched} tensors")
    if quantizer.binary is None:
        argv = [sys.executable, "-m", "tunesmith.export.quantize", str(source), str(target), name, threads]
        argv += [str(imatrix or ""), json.dumps(list(overrides))]
    else:
        argv = [quantizer.binary, *(["--imatrix", str(imatrix)] if imatrix else [])]
        argv += [arg for pattern, qtype in overrides for arg in ("--tensor-type", f"{pattern}={qtype}")]
        argv += [str(source), str(target), name, threads]
    if not overrides:
        log(f"quantizing to {name} with {quantizer.describe()}")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
        output = (done.stderr or done.stdout).strip()[-800:]
        raise TunesmithError(f"llama.cpp's quantizer failed ({done.returncode}) quantizing to {name}: {output}")


def _quantize_in_this_process(source: str, target: str, name: str, threads: str, imatrix: str, overrides: str) -> int:
    """llama.cpp's `llama_model_quantize` (the child process `quantize` starts)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + name)
    params.nthread = int(threads)
    pairs = [
        (pattern.encode(), getattr(llama_cpp, "GGML_TYPE_" + qtype.upper())) for pattern, qtype in json.loads(overrides)
    ]
    if pairs:
        types = (llama_cpp.llama_model_tensor_override * (len(pairs) + 1))()  # zeroed: the null pattern ends it
        for slot, (pattern, qtype) in zip(types, pairs):
            slot.pattern, slot.type = pattern, qtype
        params.tt_overrides = types
    if imatrix:
        entries = read_imatrix(Path(imatrix))
        names = [key.encode() for key in entries]  # kept alive until llama.cpp is done
        table = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()  # zeroed: the last one ends it
        for slot, key, values in zip(table, names, entries.values()):
            slot.name, slot.size = key, values.size
            slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        params.imatrix = table
        # recorded in the GGUF as llama-quantize records it
        records = (llama_cpp.llama_model_kv_override * 3)()  # zeroed: the empty key ends it
        records[0].key, records[0].tag = b"quantize.imatrix.file", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
        file_value: Any = records[0].value  # a C union; llama_cpp's annotation lists its members' types
        file_value.val_str = Path(imatrix).name.encode()[:127]
        records[1].key, records[1].tag = b"quantize.imatrix.entries_count", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
        count_value: Any = records[1].value
        count_value.val_i64 = len(entries)
        params.kv_overrides = records
    return int(llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)))


if __name__ == "__main__":
    sys.exit(_quantize_in_this_process(*sys.argv[1:]))

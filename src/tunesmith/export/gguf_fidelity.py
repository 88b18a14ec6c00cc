"""Does a quantized GGUF still hold what fine-tuning changed? Measured per tensor, fixed where not.

Fine-tuning moves a weight W_base by a small dW (LoRA: about 1% of |W|), far below a 4- or 5-bit
quantization step. Rounding noise that is independent of dW leaves it in place on average: the
quantized tensor Q, projected on dW, keeps `kept = <Q - W_base, dW> / |dW|^2` close to 1. It is not
independent when the base weights themselves lie on a quantization grid (a base converted from a
GGUF, like the embedded SmolLM2, which ships as Q4_1): a quantizer that finds that grid rounds the
tuned weights back onto it (llama.cpp's Q5_1 with an importance matrix kept 6% of dW here), and a
grid that beats against it amplifies dW (Q5_1 without one: 160%). The model then behaves like the
base, or like an overdone fine-tune, though every tensor's error looks ordinary.

So after llama.cpp quantizes, each tuned tensor's `kept` is measured (dequantized with the gguf
package); a tensor outside `KEPT_RANGE` is quantized again with a type from `FALLBACKS` (through
llama.cpp's per-tensor type override) until every tensor keeps its change, and the export says which.
A tensor whose dW is too small against the rounding noise to measure (`NOISE_LIMIT`) is not judged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunesmith.export.gguf import ExportPlan

KEPT_RANGE = (0.75, 1.33)
"""Allowed fraction of dW kept: within a quarter of it, either way (log-symmetric)."""
NOISE_LIMIT = 0.05
"""A tensor is judged only when independent rounding noise would move `kept` by less than this (1 sigma)."""
FALLBACKS = ("q5_0", "q8_0")
"""Types tried, in order, for a tensor that lost its change; q8_0's step is below any LoRA's dW."""


@dataclass(frozen=True)
class Kept:
    name: str
    kept: float
    noise: float  # one standard deviation of `kept` under rounding noise independent of dW
    qtype: str

    @property
    def judged(self) -> bool:
        return self.noise < NOISE_LIMIT

    @property
    def faithful(self) -> bool:
        return not self.judged or KEPT_RANGE[0] <= self.kept <= KEPT_RANGE[1]


def measure(gguf_path: Path, plan: ExportPlan, tuned: Path, base: Path) -> list[Kept]:
    """`kept` for each tensor of `gguf_path` that differs between the `tuned` and `base` model folders."""
    import gguf

    from tunesmith.export.gguf_tensors import gguf_layout

    stored = {t.name: t for t in gguf.GGUFReader(str(gguf_path)).tensors}
    base_weights = dict(gguf_layout(plan, base))
    found = []
    for name, weight in gguf_layout(plan, tuned):
        original = base_weights.get(name)
        tensor = stored.get(name)
        if original is None or tensor is None or original.shape != weight.shape or weight.ndim < 2:
            continue
        if (original == weight).all():  # frozen by fine-tuning: nothing to keep
            continue
        quantized = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(weight.shape)
        measured = kept_fraction(quantized, weight, original)
        if measured is not None:
            found.append(Kept(name, *measured, tensor.tensor_type.name.lower()))
    return found


def kept_fraction(quantized: Any, tuned: Any, base: Any) -> tuple[float, float] | None:
    """(kept, its noise) for one tensor: how much of tuned - base the quantized tensor holds, and one
    standard deviation of that figure under rounding noise independent of the change; None if unchanged."""
    import numpy as np

    delta = (np.asarray(tuned, dtype=np.float64) - base).ravel()
    size = float(delta @ delta)
    if size == 0.0:
        return None
    moved = (np.asarray(quantized, dtype=np.float64) - base).ravel()
    error = moved - delta
    noise = math.sqrt(float(error @ error) / delta.size) / math.sqrt(size)
    return float(moved @ delta) / size, noise


def override_patterns(types: dict[str, str]) -> list[tuple[str, str]]:
    """(regex matching exactly that tensor name, type) for llama.cpp's per-tensor override."""
    return [(f"^{re.escape(name)}$", qtype) for name, qtype in sorted(types.items())]


def next_types(unfaithful: list[Kept], current: dict[str, str]) -> dict[str, str] | None:
    """The overrides to try next, or None when a tensor has no fallback left."""
    chosen = dict(current)
    for item in unfaithful:
        tried = current.get(item.name)
        start = FALLBACKS.index(tried) + 1 if tried in FALLBACKS else 0
        options = [t for t in FALLBACKS[start:] if t != item.qtype]
        if not options:
            return None
        chosen[item.name] = options[0]
    return chosen


def summary(results: list[Kept]) -> str:
    judged = [r for r in results if r.judged]
    if not judged:
        return f"{len(results)} tuned tensors, each change too small against the rounding to measure"
    values = [r.kept for r in judged]
    return (
        f"{len(judged)} tuned tensors keep {min(values):.2f}..{max(values):.2f} of what fine-tuning changed "
        f"(allowed {KEPT_RANGE[0]}..{KEPT_RANGE[1]})"
    )


def stored_types(gguf_path: Path) -> dict[str, str]:
    """The type llama.cpp gave each quantized tensor of `gguf_path` (float tensors left out)."""
    import gguf

    floats = {"f32", "f16", "bf16"}
    found = {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(str(gguf_path)).tensors}
    return {name: qtype for name, qtype in found.items() if qtype not in floats}


def faithful_quantization(
    quantize_with: Callable[[list[tuple[str, str]]], None],
    measure_output: Callable[[], list[Kept]],
    types_of_output: Callable[[], dict[str, str]],
    log: Callable[[str], None],
) -> dict[str, str]:
    """Quantize (llama.cpp's own choice of types first), measure, and quantize again with a fallback
    type for each tensor that lost its change, until none does; returns the types changed.

    Every other tensor is pinned to the type llama.cpp chose the first time: its mixtures (q4_k_m,
    q5_k_m) pick a layer's type by counting the tensors it chose for, so overriding some would
    otherwise move the others."""
    from tunesmith.errors import TunesmithError

    quantize_with([])
    pinned = types_of_output()
    changed: dict[str, str] = {}
    for _ in range(len(FALLBACKS) + 1):
        results = measure_output()
        unfaithful = [r for r in results if not r.faithful]
        if not unfaithful:
            log(f"checked: {summary(results)}" + (f"; {len(changed)} of them as a fallback type" if changed else ""))
            return changed
        worst = max(unfaithful, key=lambda r: abs(math.log(max(r.kept, 1e-6))))
        chosen = next_types(unfaithful, changed)
        if chosen is None:
            break
        log(
            f"{len(unfaithful)} tensors lost what fine-tuning changed in them (e.g. {worst.name} as "
            f"{worst.qtype} keeps {worst.kept:.2f} of it): quantizing them again as "
            f"{', '.join(sorted({chosen[r.name] for r in unfaithful}))}"
        )
        changed = chosen
        quantize_with(override_patterns({**pinned, **changed}))
    raise TunesmithError(
        "the quantized GGUF does not keep what fine-tuning changed even with q8_0 tensors; nothing was kept; "
        "export --type f16 or q8_0"
    )

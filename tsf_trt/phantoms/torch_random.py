"""``torch.randn`` on the CPU, reproduced with numpy, so phantoms need no torch.

Why: every phantom (training data, the held-out subjects of the model card) was first drawn
with ``torch.randn(..., generator=torch.Generator().manual_seed(seed))``; the generator must keep
drawing the same numbers now that torch is optional. What torch does on the CPU (checked
against torch 2.13 in ``tests/test_phantom.py``):

* the engine is MT19937 seeded with the low 32 bits of the seed by the reference algorithm, the
  same as numpy's legacy ``RandomState(seed)`` seeding;
* a contiguous float32 tensor of n >= 16 values: n uniforms ``(u32 & (2**24 - 1)) * 2**-24``, then
  Box-Muller over each block of 16 (``u1 = 1 - a[:8]``, ``u2 = a[8:]``; the first 8 outputs
  ``r cos``, the last 8 ``r sin``, in float32); if n % 16 != 0 the last 16 outputs are drawn again
  from 16 new uniforms;
* n < 16: one double N(0, 1) at a time, rounded to float32, from two 53-bit uniforms (two 32-bit
  draws each, the first the high word): ``r = sqrt(-2 log1p(-u2))``, ``theta = 2 pi u1``; it returns
  ``r cos theta`` and keeps ``r sin theta`` for the next such draw, across calls.

torch evaluates log, sqrt, cos and sin with its own vectorised kernels, which differ from numpy's
by a few float32 ulp (at most 5 measured, < 1e-6 absolute); everything else is identical.
"""

from __future__ import annotations

import math

import numpy as np

_LOW24 = (1 << 24) - 1
_LOW53 = (1 << 53) - 1
_CHUNK = 1 << 20  # values per chunk, a multiple of 16


class TorchCompatibleRandom:
    """The float32 normal stream of a CPU ``torch.Generator().manual_seed(seed)``."""

    def __init__(self, seed: int) -> None:
        _, key, pos = np.random.RandomState(int(seed) & 0xFFFFFFFF).get_state()[:3]  # torch keeps the low 32 bits
        self._bits = np.random.MT19937()
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": pos}}
        self._next_normal: float | None = None  # torch's cached second Box-Muller value (small draws)

    def randn(self, *shape: int, out: np.ndarray | None = None) -> np.ndarray:
        """Like ``torch.randn(shape, generator=...)``: float32 N(0, 1) of this shape, C order; ``out``:
        a C-contiguous float32 array of that size to fill instead of a new one (returned reshaped)."""
        n = math.prod(shape)
        if out is None:
            out = np.empty(n, dtype=np.float32)
        elif out.dtype != np.float32 or out.size != n or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous float32 of {n} values")
        out = out.reshape(-1)
        if n < 16:
            out[:] = [self._normal_double() for _ in range(n)]
            return out.reshape(shape)
        whole = n - n % 16
        for start in range(0, whole, _CHUNK):  # in chunks of whole blocks: the same stream, small temporaries
            stop = min(start + _CHUNK, whole)
            _box_muller16(self._uniform24(stop - start), out[start:stop])
        if n % 16:  # torch draws the tail's uniforms, then redraws the last 16 values from 16 new ones
            self._bits.random_raw(n % 16)
            _box_muller16(self._uniform24(16), out[n - 16:])
        return out.reshape(shape)

    def _uniform24(self, n: int) -> np.ndarray:
        raw = self._bits.random_raw(n).astype(np.uint32)
        raw &= np.uint32(_LOW24)
        uniform = raw.astype(np.float32)
        uniform *= np.float32(2.0**-24)
        return uniform

    def _normal_double(self) -> float:
        if self._next_normal is not None:
            value, self._next_normal = self._next_normal, None
            return value
        words = self._bits.random_raw(4)
        u1, u2 = (float(((int(hi) << 32) | int(lo)) & _LOW53) * 2.0**-53 for hi, lo in (words[:2], words[2:]))
        r = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._next_normal = r * math.sin(theta)
        return r * math.cos(theta)


def _box_muller16(uniform: np.ndarray, out: np.ndarray) -> None:
    """Blocks of 16 uniforms -> 16 normals each, into ``out``, as torch pairs them."""
    block = uniform.reshape(-1, 16)
    radius = np.sqrt(np.float32(-2.0) * np.log(np.float32(1.0) - block[:, :8]))
    theta = np.float32(2.0 * math.pi) * block[:, 8:]
    normal = out.reshape(-1, 16)
    np.multiply(radius, np.cos(theta), out=normal[:, :8])
    np.multiply(radius, np.sin(theta), out=normal[:, 8:])

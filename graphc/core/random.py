"""The counter-based random numbers graphc's C and its NumPy reference share, bit for bit.

`random_bits` is the kernel library's gc_random_bits (templates/graphc_kernels.c): 32 bits for
element `index` of the stream keyed (seed, step), with no state, so the same arguments give
the same bits in every program, thread and call. Dropout's masks use it (ops/dropout.py), and
so does `sample_index`, the kernel library's gc_sample_f/_d: a draw from softmax(logits / T),
which a language model's generate function calls once per new token.
"""
from __future__ import annotations

import numpy as np

_M32 = np.uint64(0xFFFFFFFF)


def _mix32(h: np.ndarray) -> np.ndarray:
    """The lowbias32 integer hash, mod 2^32, on uint64 arrays holding 32-bit values."""
    h = h & _M32
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x7FEB352D)) & _M32
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x846CA68B)) & _M32
    h ^= h >> np.uint64(16)
    return h


def random_bits(seed: int, step: int, index: np.ndarray) -> np.ndarray:
    """gc_random_bits of the kernel library: 32 random bits per index, as uint64."""
    s = np.asarray([seed & 0xFFFFFFFF], dtype=np.uint64)
    key = _mix32((s * np.uint64(0x9E3779B9) + _mix32(np.asarray([step & 0xFFFFFFFF], dtype=np.uint64))) & _M32)
    return _mix32(key ^ (np.asarray(index, dtype=np.uint64) & _M32))


def sample_index(logits, temperature: float, seed: int, step: int) -> int:
    """gc_sample of the kernel library: an index i drawn with probability softmax(logits / T)_i.

    With m the largest logit, e_i = exp((l_i − m) / T) summed in order into S, and u the bits of
    (seed, step, 0) over 2^32: the first i whose running sum of e exceeds u·S. T ≤ 0 (or a
    single logit): the argmax, the first on a tie."""
    logits = np.asarray(logits, dtype=np.float64).ravel()
    best = int(np.argmax(logits))
    if temperature <= 0.0 or logits.size <= 1:
        return best
    e = np.exp((logits - logits[best]) / float(temperature))
    acc = np.cumsum(e)          # left to right, as the C loop adds
    u = float(random_bits(seed, step, np.zeros(1, dtype=np.uint64))[0]) / 4294967296.0 * float(acc[-1])
    hit = np.nonzero(acc > u)[0]
    return int(hit[0]) if hit.size else best

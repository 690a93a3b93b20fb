"""A short fingerprint of the parameters: equal hashes mean bitwise-equal weights.

Two runs can be compared from their summaries or MLflow runs without loading either
model. The hash covers the dtype and the shape as well as the bytes, so a float64
copy of float32 weights, or the same bytes read as another shape, hashes otherwise.
Twelve hex characters (48 bits) are short enough to read aloud and long enough that
two different models of one project do not collide by chance.
"""

from __future__ import annotations

import hashlib

import numpy as np

HASH_CHARS = 12


def param_hash(theta: np.ndarray) -> str:
    """The first HASH_CHARS hex characters of blake2b over dtype, shape and bytes."""
    a = np.ascontiguousarray(theta)
    h = hashlib.blake2b(digest_size=HASH_CHARS // 2)
    # dtype.str names the byte order too ('<f4'), so the same values hash alike on
    # any machine only when they are stored alike: it is the bytes that are compared.
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()

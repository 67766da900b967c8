"""How raw profiles are stored: float32 (the default), or float16 scaled by a power of two per row.

Raw profiles are mean absolute gradients, often 1e-6..1e-9: below float16's normal range
(6.1e-5), where plain float16 would lose them. A float16 database stores each row as
``raw * 2**e`` in float16, with ``e`` (``profile_exp``, int16) chosen per row so that the row's
largest |value| times ``2**e`` lies in [2**14, 2**15) (a row of zeros: ``e`` = 0). Every value
within 2**28 (about 2.7e8) of its row's largest keeps float16's full relative precision: an
error of at most 2**-11 of the value; smaller values (float16 subnormals) an absolute error of at
most 2**-39 of the row's largest. Decoding, ``f16 * 2**-e`` in float32, is exact.
"""

from __future__ import annotations

import numpy as np

PROFILE_DTYPES = ("float32", "float16")
DEFAULT_PROFILE_DTYPE = "float32"
PROFILE_EXP = "profile_exp"  # the samples column of a float16 database: each row's power-of-two scale
PROFILE_EXP_TOP = 15  # a row's largest |value| * 2**e lies in [2**(TOP - 1), 2**TOP)


def encode_profiles(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, units) raw profiles -> (float16 ``raw * 2**e``, int16 ``e`` per row).

    Non-finite values are refused (ValueError): the indexer records such samples as failures
    and never stores them, so one reaching here would only be rounded to garbage."""
    raw = np.asarray(raw, dtype=np.float64).reshape(len(raw), -1)
    if not np.isfinite(raw).all():
        raise ValueError("a raw profile holds a non-finite value; it cannot be stored as float16")
    peak = np.abs(raw).max(axis=1, initial=0.0)
    _, k = np.frexp(peak)  # peak = f * 2**k, f in [0.5, 1)
    exp = np.where(peak > 0, PROFILE_EXP_TOP - k, 0).astype(np.int16)
    return np.ldexp(raw, exp[:, None].astype(np.int32)).astype(np.float16), exp


def decode_profiles(scaled: np.ndarray, exp: np.ndarray) -> np.ndarray:
    """The true float32 raw profiles of stored float16 rows ``raw * 2**e`` and their ``e`` (exact)."""
    scaled = np.asarray(scaled).astype(np.float32, copy=False)
    exp = np.asarray(exp).astype(np.int32).reshape(-1, 1)
    return np.ldexp(scaled, -exp).astype(np.float32, copy=False)


def profile_bytes(n_units: int, dtype: str) -> int:
    """Bytes of one sample's stored profile before compression (float16: the values and their int16 exponent)."""
    return n_units * 4 if dtype == "float32" else n_units * 2 + 2

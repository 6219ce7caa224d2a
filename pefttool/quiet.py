"""Quieting third-party imports that log harmless noise (a leaf module: imports nothing of
pefttool, so anything may use it)."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def quiet_bitsandbytes_import() -> Iterator[None]:
    """PEFT imports bitsandbytes when it is installed, which on an AVX512-BF16 CPU logs a
    harmless 'Failed to load CPU gemm_4bit_forward from kernels-community' warning."""
    log = logging.getLogger("bitsandbytes")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)

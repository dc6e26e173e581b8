"""Runtimes behind one interface (:class:`~.base.Backend`), one class per runtime; the
pipeline never sees which one it drives. Which one runs, and at which precision, is chosen
above this package (tsf_trt.synthesis.backend), never inside it.

GPU packages are imported only when a GPU backend is built; without them the request ends in
a TsfError that names what is missing.
"""

from __future__ import annotations

from tsf_trt.backends.base import Backend
from tsf_trt.backends.names import AUTO, AVAILABLE, NAMES, PRECISIONS, check_precision

__all__ = ["AUTO", "AVAILABLE", "NAMES", "PRECISIONS", "Backend", "check_precision"]

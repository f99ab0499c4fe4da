"""One BLAS thread for small numpy linear algebra (the 3D fits).

numpy's OpenBLAS keeps its worker threads spinning for a while after every call. On a machine with
few cores they then take the CPU from whatever runs next: measured on this project's 2-core
machine, the ict fit followed by rendering the head took 166 ms instead of 67 ms, because the
renderer's torch threads waited for spinning BLAS threads. The fits solve 155x155 systems, which
one thread does as fast as several, so they run under :func:`single_blas_thread`.

threadpoolctl (scikit-learn's library for exactly this) switches the loaded BLAS at run time; the
thread count is restored when the block ends, so nothing else in the process (ComfyUI, other
packs) sees a change. Without threadpoolctl the block runs unchanged.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """Run the block with one BLAS thread (numpy/scipy), then restore the previous counts.

    The loaded libraries are looked up on each call (about 0.6 ms), so a BLAS loaded later in the
    process (scipy's own OpenBLAS, next to numpy's) is limited too.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.debug("threadpoolctl is not installed: BLAS keeps its thread count")
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield

"""Reserving a task's disk space before its first byte is fetched.

A cache file written sparsely runs out of disk mid-task when the disk is smaller than the task,
or when other data fills it meanwhile: the node has then taken origin reads that others must
repeat, and fails late. :func:`reserve` allocates the whole file up front with ``fallocate(2)``
(mode 0: blocks allocated, nothing written, so it costs no I/O), so a node without room fails
before it joins the task. Where the filesystem or platform has no ``fallocate`` (NFSv3, some
FUSE filesystems, macOS) the file stays sparse; glibc's ``posix_fallocate`` is not used for
that reason, as it falls back to writing zeros over the whole file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable

_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_FALLOCATE = _load_fallocate()


def reserve(fd: int, length: int) -> bool:
    """Make the (new, empty) file at ``fd`` ``length`` bytes long with its blocks allocated;
    True when they are (or there are none to allocate), False when the file could only be
    extended sparsely (no ``fallocate`` here).

    Raises OSError with ``errno.ENOSPC`` (or ``EDQUOT``) when the filesystem has no room; some
    blocks may have been allocated by then, so the caller removes the file."""
    if length <= 0:
        return True
    if _FALLOCATE is not None:
        if _FALLOCATE(fd, 0, 0, length) == 0:
            return True
        err = ctypes.get_errno()
        if err not in _UNSUPPORTED:
            raise OSError(err, os.strerror(err))
    os.ftruncate(fd, length)
    return False


def no_room(exc: OSError) -> bool:
    """True when ``exc`` says the disk (or the user's disk quota) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)

"""Child processes that never outlive their parent."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Run in the child: the kernel sends it SIGTERM when its parent (``parent_pid``, as the
    parent knew itself) dies. A parent that died before this ran (between the fork and now)
    sends nothing any more, the child having been handed to a reaper: the child then ends
    itself at once, as the signal would have ended it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return  # not Linux: the parent's own cleanup still stops children
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def dies_with_this_process() -> Callable[[], None]:
    """A ``preexec_fn`` for a child of this process: :func:`die_with_parent`, with this
    process's pid (taken now, before the fork)."""
    return functools.partial(die_with_parent, os.getpid())

"""What the process runtime's meter reads from Linux: the CPU time of a DService's process
tree and the peak resident memory of its process (docs/metering.md says how exact each is).

Every file stays open from the DService's spawn, so an event costs one ``pread`` per process
and no ``open`` or psutil object. An open ``/proc/<pid>`` file also names the process it was
opened for: once that process is reaped, reads fail instead of answering for a newcomer that
reused its pid.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import psutil

#: Kernel clock ticks per second, the unit of the CPU times in ``/proc/<pid>/stat``
#: (USER_HZ: 100 on every common build, so a tick is 10 ms).
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_NS_PER_TICK = 1_000_000_000 // CLOCK_TICKS_PER_S

#: How often a busy DService's process tree is searched for new descendants; an idle one is
#: searched again whenever a request arrives.
RESCAN_INTERVAL_S = 1.0


def _process_cpu_clock(pid: int) -> int:
    """The clock id of ``pid``'s whole-process CPU clock, as ``clock_getcpuclockid(3)`` makes
    it (``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``): the scheduler's nanosecond runtime of
    all the process's threads, the same total ``/proc`` reports in ticks."""
    return ((~pid) << 3) | 2


class _Stat:
    """An open ``/proc/<pid>/stat``."""

    __slots__ = ("_fd", "pid")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)

    def _fields(self, count: int) -> list[bytes] | None:
        """The fields from state (field 3) on, the first ``count`` of them split off; None
        once the process has been reaped."""
        try:
            data = os.pread(self._fd, 1024, 0)
        except OSError:
            return None
        if not data:
            return None
        # After the command name, which may hold spaces and parentheses: state is field 3,
        # utime 14, stime 15, cutime 16, cstime 17, num_threads 20 (proc(5)).
        return data[data.rindex(b")") + 2 :].split(None, count)

    def ticks(self) -> tuple[int, int] | None:
        """(utime + stime, cutime + cstime) in ticks; None once the process has been reaped.
        cutime and cstime hold the children it has waited for, with theirs."""
        fields = self._fields(15)
        if fields is None:
            return None
        return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])

    def sample(self) -> tuple[int, int, int] | None:
        """:meth:`ticks` and the number of threads the process has, from one read."""
        fields = self._fields(18)
        if fields is None:
            return None
        own = int(fields[11]) + int(fields[12])
        return own, int(fields[13]) + int(fields[14]), int(fields[17])

    def close(self) -> None:
        """Closes the file."""
        os.close(self._fd)


#: Whether this kernel has ``/proc/<pid>/task/<tid>/children`` (CONFIG_PROC_CHILDREN).
_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


#: What one read of a ``children`` file takes; a fuller file is read by the slower way.
_CHILDREN_READ = 4096


def _children(pid: int) -> list[int]:
    """The live children of ``pid``: from every thread's ``children`` file (the thread that
    forked is the child's parent), or from a scan of all of /proc when the kernel lacks them."""
    if not _CHILDREN_FILES:
        try:
            return [child.pid for child in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(child) for child in f.read().split())
        except OSError:
            continue  # the thread ended meanwhile
    return found


class ProcessTreeCpu:
    """CPU time (user + system) of a DService process and its descendants, in microseconds
    since each started; it never decreases.

    The process's own time comes from its CPU clock (nanoseconds); its children's from
    ``/proc`` (ticks): the live ones found by the last scan of the tree, and the ones that
    ended and were waited for through their parent's cutime and cstime. A descendant the
    process does not wait for, or one that escapes the tree (double fork), is lost when it
    ends. Once the process itself is gone the figure stays where it was.
    """

    def __init__(self, pid: int, now: Callable[[], float] = time.monotonic) -> None:
        self.pid = pid
        self._now = now
        self._root: _Stat | None = _Stat(pid)
        self._clock: int | None = _process_cpu_clock(pid)
        try:
            time.clock_gettime_ns(self._clock)
        except OSError:  # no such clock here: the process's own ticks serve instead
            self._clock = None
        #: Live descendants by pid, parents before their children.
        self._descendants: dict[int, _Stat] = {}
        #: The process's main thread's ``children`` file, kept open: while the process has
        #: one thread, that thread forked every child it has (see :meth:`_root_children`).
        self._main_children: int | None = None
        if _CHILDREN_FILES:
            try:
                path = f"/proc/{pid}/task/{pid}/children"
                self._main_children = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._main_children = None
        self._scanned_at = -RESCAN_INTERVAL_S
        #: The root's /proc reading taken by the last search, for the reading that follows.
        self._root_sample: tuple[int, int, int] | None = None
        self._last_us = 0

    @property
    def single(self) -> bool:
        """True while the last scan found no live descendant."""
        return not self._descendants

    def _root_children(self) -> list[int]:
        """The process's live children. While it has a single thread (its main one, whose
        thread id is its pid) that thread is every child's parent: a thread that ended handed
        its children on to a live one of the process before it stopped being counted, and a
        thread that starts after the count forks nothing the count could have missed before
        this read. So one ``pread`` of a file kept open serves instead of listing the
        threads and opening a file per thread."""
        root, main = self._root, self._main_children
        if root is None:
            return []
        self._root_sample = sample = root.sample()
        if main is not None and sample is not None and sample[2] == 1:
            with contextlib.suppress(OSError):
                data = os.pread(main, _CHILDREN_READ, 0)
                if len(data) < _CHILDREN_READ:
                    return [int(child) for child in data.split()]
        return _children(self.pid)

    def rescan(self) -> None:
        """Finds the process's live descendants now (a few small /proc reads). Its read of
        the process's own ``stat`` also serves the next :meth:`read_us`, which is meant to
        follow at once (the meter calls the two back to back)."""
        self._scanned_at = self._now()
        found: dict[int, _Stat] = {}
        parents = [self.pid]
        while parents:
            parent = parents.pop(0)
            for child in self._root_children() if parent == self.pid else _children(parent):
                stat = self._descendants.pop(child, None)
                if stat is None:
                    try:
                        stat = _Stat(child)
                    except OSError:
                        continue  # ended meanwhile: its parent's cutime has it, or will
                found[child] = stat
                parents.append(child)
        for gone in self._descendants.values():
            gone.close()
        self._descendants = found

    def read_us(self) -> int:
        """The tree's CPU time now, in microseconds."""
        if self._root is None:
            return self._last_us
        if self._now() - self._scanned_at >= RESCAN_INTERVAL_S:
            self.rescan()
        # The parent before its children: a child reaped between the two reads is then
        # missed once (the figure holds still) rather than counted twice. A search (above,
        # or just before at a busy period's start) read the parent already: that serves.
        root, self._root_sample = self._root_sample, None
        if root is None:
            root = self._root.sample()
        if root is None:
            return self._last_us  # reaped: its pid, and so its clock, may be someone else's
        own_ticks, children_ticks, _ = root
        if self._clock is not None:
            try:
                total_ns = time.clock_gettime_ns(self._clock)
            except OSError:
                return self._last_us
        else:
            total_ns = own_ticks * _NS_PER_TICK
        total_ns += children_ticks * _NS_PER_TICK
        for pid, stat in list(self._descendants.items()):
            ticks = stat.ticks()
            if ticks is None:
                stat.close()
                del self._descendants[pid]
                continue
            total_ns += (ticks[0] + ticks[1]) * _NS_PER_TICK
        # A child's time moves into its parent's cutime when it is reaped, rounded down to
        # whole ticks: the figure holds still until the true total passes it again.
        self._last_us = max(self._last_us, total_ns // 1000)
        return self._last_us

    def close(self) -> None:
        """Closes every file."""
        if self._root is not None:
            self._root.close()
            self._root = None
        if self._main_children is not None:
            os.close(self._main_children)
            self._main_children = None
        for stat in self._descendants.values():
            stat.close()
        self._descendants = {}


class PeakRss:
    """The peak resident memory of one process since the last :meth:`reset`: ``VmHWM`` in
    ``/proc/<pid>/status``, reset by writing ``5`` to ``/proc/<pid>/clear_refs`` (Linux 4.0
    and later; the process's owner or root may)."""

    def __init__(self, pid: int) -> None:
        self._status: int | None = None
        self._clear_refs: int | None = None
        try:
            self._status = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
            self._clear_refs = os.open(f"/proc/{pid}/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            self.close()  # not measured, ever

    def reset(self) -> bool:
        """Resets the peak to the current resident size; False when that is not possible."""
        if self._clear_refs is None:
            return False
        try:
            os.write(self._clear_refs, b"5")
        except OSError:
            return False
        return True

    def read(self) -> int | None:
        """The peak since the last reset, in bytes; None when unknown."""
        if self._status is None:
            return None
        try:
            data = os.pread(self._status, 4096, 0)
        except OSError:
            return None
        start = data.find(b"\nVmHWM:")
        if start < 0:
            return None  # a kernel thread, or the process is a zombie
        end = data.find(b"\n", start + 1)
        return int(data[start + 7 : end].split()[0]) * 1024

    def close(self) -> None:
        """Closes both files."""
        for fd in (self._status, self._clear_refs):
            if fd is not None:
                os.close(fd)
        self._status = self._clear_refs = None

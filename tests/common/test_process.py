"""A child armed to die with its parent: also when the parent died before it was armed."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys

import psutil

from cgn_common.process import die_with_parent, dies_with_this_process

SLEEPER = [sys.executable, "-c", "import time; time.sleep(30)"]


def test_a_child_whose_parent_died_before_it_was_armed_ends_itself() -> None:
    """The parent's death between fork and prctl: the child's parent is no longer the pid
    the parent gave it (here a pid that names no parent of it), and it ends at once."""
    child = subprocess.Popen(SLEEPER, preexec_fn=functools.partial(die_with_parent, 2**22 + 7))
    assert child.wait(timeout=10) == -signal.SIGTERM


def test_a_child_of_a_live_parent_keeps_running() -> None:
    child = subprocess.Popen(SLEEPER, preexec_fn=dies_with_this_process())
    try:
        assert psutil.Process(child.pid).ppid() == os.getpid()
        assert child.poll() is None
    finally:
        child.kill()
        child.wait(timeout=10)

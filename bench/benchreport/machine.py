"""How busy the machine is with *other* processes: the cores they used over a stretch of
time, from Linux's ``/proc/stat`` (every CPU's busy time) less this process's own CPU time.

The load average cannot say this: it counts the benchmark's own threads (a 2-thread run
on 2 cores shows a load near 2 on a quiet machine) and it follows a minute behind.  The
benchmark harness (``bench/benchlib.py``) samples around each contender's block and stores
the figure with the row; ``running`` waits for a quiet machine before a run and a retry.

    start = cpu_sample()
    ...                                   # the work, in this process
    others_cores(start, cpu_sample())     # -> 0.03 on a quiet machine, ~1 beside a busy core
"""

from __future__ import annotations

import os
import time

# /proc/stat's first line: cpu user nice system idle iowait irq softirq steal guest guest_nice,
# in USER_HZ ticks.  Busy: all but idle and iowait (guest time is inside user already).
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)



def cpu_sample():
    """(wall seconds, busy CPU seconds of the whole machine, CPU seconds of this process),
    or None where ``/proc/stat`` cannot be read (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        ticks = sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields))
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return time.perf_counter(), ticks / hz, time.process_time()



def others_cores(start, end):
    """Cores used on average by other processes between two ``cpu_sample`` s (never below
    0; the machine's counters tick at 100 Hz, so a window under a second is good to about
    0.1-0.2 core); None when either sample is missing or no time passed."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    machine = end[1] - start[1]
    own = end[2] - start[2]
    return max(0.0, (machine - own) / (end[0] - start[0]))



def sample_others(seconds=1.0):
    """Cores other processes use now: ``others_cores`` over ``seconds`` of sleep."""
    start = cpu_sample()
    time.sleep(seconds)
    return others_cores(start, cpu_sample())



def wait_for_quiet(limit, max_wait_s, log=print, window_s=1.0):
    """Sample the other processes' cores each ``window_s`` until they use at most
    ``limit`` or ``max_wait_s`` has passed; returns the last sample (None off Linux)."""
    others = sample_others(window_s)
    waited = window_s
    if others is not None and others > limit and max_wait_s > 0:
        log(f"the machine is busy (other processes use {others:.1f} cores); waiting up to "
            f"{max_wait_s:.0f} s for it to go quiet ...")
    while others is not None and others > limit and waited < max_wait_s:
        others = sample_others(window_s)
        waited += window_s
    return others

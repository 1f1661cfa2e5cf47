"""The machine the models run on, as the thread count needs it: physical cores (from sysfs,
else psutil) and how busy the CPUs are right now (/proc/loadavg).

No llama.cpp here: this is read before a model is loaded (and by commands that load none).
What llama.cpp itself was built for (backends, devices, SIMD flags) is :mod:`localllm.backend`.
"""

from __future__ import annotations

import os
import time


def _linux_physical_cores() -> int | None:
    """Distinct (package, core) pairs in sysfs, as psutil counts them; None off Linux.

    Read directly: importing psutil costs a one-shot run about 10 ms of its start."""
    root = "/sys/devices/system/cpu"
    try:
        names = [n for n in os.listdir(root) if n.startswith("cpu") and n[3:].isdigit()]
    except OSError:
        return None
    cores: set[tuple[str, str]] = set()
    for name in names:
        try:
            with open(f"{root}/{name}/topology/core_id", encoding="ascii") as f:
                core = f.read().strip()
            with open(f"{root}/{name}/topology/physical_package_id", encoding="ascii") as f:
                package = f.read().strip()
        except OSError:
            continue  # an offline CPU has no topology
        cores.add((package, core))
    return len(cores) or None


def physical_cores() -> int:
    """Physical cores this process may use: the default thread count."""
    found = _linux_physical_cores()
    if found is not None:
        cores = found
    else:
        try:
            import psutil

            cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        except ImportError:  # pragma: no cover - psutil is a dependency
            cores = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    return max(1, cores)


def _runnable_tasks() -> int | None:
    """Tasks runnable on this machine right now, this process counted once (Linux), else None.

    This process's own other threads are not competition: a model loading on a helper thread
    (:mod:`localllm.preload`) while this one plans must not cost the load a thread."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(1, running - own_runnable_threads() + 1)


def own_runnable_threads() -> int:
    """This process's threads that are running or ready to run (Linux; at least 1, the caller)."""
    count = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue  # ended meanwhile
        if stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "R":  # the name may hold ") "
            count += 1
    return max(1, count)


def default_threads() -> int:
    """Threads for a model when the profile names none: the physical cores, less the CPUs that
    other work keeps busy right now.

    llama.cpp's CPU threads meet at a barrier after every operation; when the machine has
    fewer free CPUs than threads, every barrier waits for a descheduled thread's time slice and
    decoding gets an order of magnitude slower (measured on 2 cores with two other busy
    processes: 2 threads gave 0.4 tokens/s, 1 thread 9.5). When the machine looks busy the
    count of runnable tasks is read twice more, a millisecond apart, and the smallest taken, so
    a passing blip does not cost a thread; a quiet machine costs one read of /proc/loadavg.
    """
    cores = physical_cores()
    running = _runnable_tasks()
    if running is None:
        return cores
    for _ in range(2):
        if running <= 1:
            break
        time.sleep(0.001)
        again = _runnable_tasks()
        running = min(running, again if again is not None else running)
    busy = max(0, running - 1)  # the others: not this process
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return max(1, min(cores, logical - busy))

"""The share of CPU time the hypervisor gave to other guests ("steal", /proc/stat), for the benchmarks.

On a virtual machine a vCPU can be runnable yet not run, because its physical core serves another
guest; the guest's kernel counts that time as steal. It lowers a benchmark's figure without any
process inside the machine being busy, so the benchmarks report it beside their timings.
"""

from __future__ import annotations


def cpu_jiffies(path="/proc/stat"):
    """``(steal, total)`` jiffies of all CPUs since boot (``None`` where ``path`` is unreadable)."""
    try:
        with open(path) as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is also counted in user.
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def steal_fraction(before, after):
    """Steal's share of all CPU time between two :func:`cpu_jiffies` readings (``None`` if unknown)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)

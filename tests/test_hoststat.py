"""bench/hoststat.py: the hypervisor's steal share that the benchmarks report beside their timings."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("hoststat", os.path.join(REPO, "bench", "hoststat.py"))
hoststat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hoststat)


def test_steal_fraction_is_steal_over_all_cpu_time_between_readings():
    # (steal, total) jiffies: 30 of 200 jiffies stolen between the readings.
    assert hoststat.steal_fraction((10, 1000), (40, 1200)) == 0.15
    assert hoststat.steal_fraction(None, (40, 1200)) is None
    assert hoststat.steal_fraction((10, 1000), (10, 1000)) is None  # no time passed


def test_cpu_jiffies_reads_the_kernels_counters():
    reading = hoststat.cpu_jiffies()
    if not os.path.exists("/proc/stat"):
        assert reading is None
        return
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    steal, total = reading
    assert 0 <= steal <= total
    assert steal <= (fields[7] if len(fields) > 7 else 0)  # counters only grow
    assert total <= sum(fields[:8])

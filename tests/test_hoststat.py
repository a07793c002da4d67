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


def test_cpu_jiffies_reads_steal_and_the_total_without_guest_time(tmp_path):
    # The aggregate line first: user nice system idle iowait irq softirq steal guest guest_nice. Guest time is
    # already inside user, so the total is the first eight fields: 100+5+20+800+10+2+3+60 = 1000.
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 20 800 10 2 3 60 40 7\ncpu0 50 2 10 400 5 1 1 30 20 3\nintr 12345\n")
    assert hoststat.cpu_jiffies(str(stat)) == (60, 1000)
    stat.write_text("cpu  100 5 20 800 10 2 3\n")  # a kernel without the steal field
    assert hoststat.cpu_jiffies(str(stat)) == (0, 940)
    assert hoststat.cpu_jiffies(str(tmp_path / "missing")) is None

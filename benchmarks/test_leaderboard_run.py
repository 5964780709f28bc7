"""The full default leaderboard run: every built-in technique on every case, seeds 0-4, as a
user runs it, with its wall time and peak memory."""
from __future__ import annotations

import resource
import subprocess
import sys
import time


def test_full_default_run(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mibench.cli.main", "run", "--technique", "all",
                           "--seeds", "0-4", "--results", str(tmp_path), "--no-progress"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    runs = len(list(tmp_path.rglob("seed*.json")))
    print(f"\nfull default run: {runs} runs in {wall / 60:.1f} min, peak memory {peak_mib:.0f} MiB")
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert runs > 0

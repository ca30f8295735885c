"""Run a command and write "wall_seconds peak_rss_kib cpu_seconds exit_status" to a file.

    python bench/launcher.py RESULT_FILE COMMAND ...

The benchmark starts every measured process through this small launcher: a child's ru_maxrss
starts from the peak of the process it was forked from, so forking it straight from the large
benchmark process would report the benchmark's own size.
"""
import os
import subprocess
import sys
import time

start = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)  # the child's own resource usage, peak RSS included
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as f:
    f.write(f"{wall} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime} {os.waitstatus_to_exitcode(status)}")

"""Time the README's demo end to end: wall time, peak memory of the process tree, and the
label-efficiency table it produced. Run on a clean state directory:

    .venv/bin/python -m benchmarks.demo_run [--home /tmp/dlvm-bench] [-- extra dlvm demo args]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, default=Path("/tmp/dlvm-bench-demo"))
    parser.add_argument("demo_args", nargs="*", help="extra arguments for `dlvm demo`")
    args = parser.parse_args()
    shutil.rmtree(args.home, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLVM_", "PREFECT_"))}
    env["DLVM_HOME"] = str(args.home)
    log_path = args.home.with_suffix(".log")
    cmd = [str(Path(sys.executable).with_name("dlvm")), "demo", *args.demo_args]
    start, peak = time.perf_counter(), 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            peak = max(peak, tree_rss(ps))
            time.sleep(0.5)
    seconds = time.perf_counter() - start
    result = {"command": " ".join(cmd), "returncode": proc.returncode, "seconds": round(seconds, 1),
              "peak_rss_mb": round(peak / 2**20), "cpus": os.cpu_count(), "log": str(log_path)}
    print(json.dumps(result, indent=2))
    if proc.returncode != 0:
        sys.exit(proc.returncode)


if __name__ == "__main__":
    main()

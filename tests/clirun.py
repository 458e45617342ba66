"""Run the real `dlvm` command line in a subprocess with its own state directory."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DLVM = str(Path(sys.executable).with_name("dlvm"))


def dlvm_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLVM_", "PREFECT_"))}
    env.update(DLVM_HOME=str(home), **extra)
    return env


def dlvm(env: dict[str, str], *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([DLVM, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"dlvm {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc

"""dlvm components: the library the flows orchestrate (one responsibility per module)."""
import os

# OpenMP threads that spin while waiting steal the cores they share with other processes:
# on a loaded 2-core machine PASSIVE made training 3-6x faster (docs/BENCHMARKS.md). It is
# read once, when torch starts its thread pool, so it is set here, before anything imports
# torch; a value the user exported wins. The thread count is chosen per run
# (components/training/device.py: cpu_threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

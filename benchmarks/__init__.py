"""Benchmarks: scripts run from the checkout (see docs/BENCHMARKS.md). A regular package, so a
``benchmarks`` module elsewhere on the path (the GPU machine holds hundreds of packages) cannot
shadow it."""

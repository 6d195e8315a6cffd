"""Benchmarks: `./dev.sh bench`. Figures and ratios against a baseline measured in the same run."""

"""Benchmarks of issue 7: one script per benchmark, `python -m bench.<name>`; see BENCHMARKS.md."""

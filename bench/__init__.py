"""Benchmarks of hpcsync against its performance targets (issue 7); see bench/README.md."""

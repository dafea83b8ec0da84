"""The fault suite: steady load from a retrying client while processes and servers are killed.

tests/faults/test_fault_matrix.py runs the short version with the test suite; `uv run python -m
tests.faults` runs the full one and prints the fault matrix of docs/reliability.md.
"""

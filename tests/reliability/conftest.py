"""The reliability suite reports what it injected: trials, kills, faults, sequences, rows lost.

The figures are counted with ``support.figures`` and printed at the end of the session by
tests/conftest.py (which also gathers them from every test process under ``pytest -n``).
"""

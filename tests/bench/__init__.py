"""The side-by-side benchmark (``make bench``, ``make bench-smoke``); see run.py.

Nothing here is collected by pytest: no module is named ``test_*``.
"""

"""Helpers that both the tests (`tests/`) and the benchmarks (`bench/`) use, free of pytest so a
benchmark never imports the test suite. Not shipped: the wheel holds only `stepstream`."""

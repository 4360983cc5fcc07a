"""shoal's benchmarks: shoal and its peers side by side, medians and ratios."""

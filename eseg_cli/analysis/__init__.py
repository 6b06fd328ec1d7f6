"""Analysis: profiling, ablations, reports and plots."""

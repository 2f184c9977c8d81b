"""The BADMM baseline (the paper's comparison): its updates and C-step, its dual variables and the inner loop."""

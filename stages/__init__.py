"""Thin CLI stages of the MDGPS pipeline: parse, read HDF5, call gps_core, write HDF5."""

import os

# One BLAS/OpenMP thread per stage process: the matrices are small (threading only
# adds overhead on two cores) and a fixed thread count keeps results bit-identical.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

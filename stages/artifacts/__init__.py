"""The HDF5 artifacts: atomic writes and checked reads, and their conversion to and from gps_core's objects."""

"""The global policy: the network in NumPy and its S-step (supervised projection of the local controllers, PyTorch)."""

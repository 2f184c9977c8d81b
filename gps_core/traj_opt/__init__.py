"""Local controllers and their optimisers: time-varying linear-Gaussian controllers, the LQR primitives, the
KL-constrained LQR C-step (its dual search and safeguards) and the initial controllers. A new C-step variant
(PI2, PILQR, ...) is a module here."""

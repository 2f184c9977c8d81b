"""Fitted linear-Gaussian models: the GMM and its normal-inverse-Wishart prior, the regression on samples, the
per-step dynamics fit and the global policy's linearisation."""

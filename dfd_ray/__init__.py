"""dfd-ray: self-supervised depth from defocus with Gaussian splats on Ray."""

__version__ = "0.1.0"

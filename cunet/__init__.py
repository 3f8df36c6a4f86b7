"""cunet: the original U-Net (Ronneberger, Fischer, Brox 2015) on hand-written GPU kernels."""
__version__ = "0.1.0"

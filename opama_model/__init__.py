"""opama model core: spherical geometry, selective scan, Mamba blocks, VCR, GMA, conditioner, pipeline.

This package never imports :mod:`opama_tools`.
"""

__version__ = "0.1.0"

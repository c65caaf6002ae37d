"""opama toolkit: data preparation, captions, metrics, reports, synthetic data and the CLI."""

__version__ = "0.1.0"

"""erasenet: train image classifiers with some of their ReLUs erased, and report mean ± std over seeds."""

__version__ = "0.1.0"

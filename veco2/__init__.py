"""veco2: VECO 2.0-style cross-lingual pre-training, XTREME evaluation and ablations."""

__version__ = "0.1.0"

"""trainer: fine-tune models fully offline from mirror bundles."""

__version__ = "0.1.0"

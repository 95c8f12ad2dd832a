"""mirror: pin Hugging Face repos into portable, verifiable bundles for offline sandboxes."""

__version__ = "0.1.0"

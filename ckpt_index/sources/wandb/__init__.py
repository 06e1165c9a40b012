"""Metadata from a Weights & Biases run: locating it, its local files, its offline log and the
online API."""

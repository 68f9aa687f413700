"""Noisy Student pseudo-labeling at scale: record schema, decoding, teacher handler, selection."""

"""Data layer: manifests in four formats, audio loading, length-bucketed batches."""

from dyncli.data.manifest import Item, Manifest, read_manifest

__all__ = ["Item", "Manifest", "read_manifest"]

"""Deployable files from a checkpoint, one exporter per format (:mod:`~dyncli.export.onnx`)."""

"""Scanners attached to the box and barcode parsing."""

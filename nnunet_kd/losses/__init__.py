"""Standalone loss modules (no nnU-Net dependency)."""

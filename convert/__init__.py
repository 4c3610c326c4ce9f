"""Workstation: ImageNet CNNs to TFLite feature extractors (+ tensorflow)."""

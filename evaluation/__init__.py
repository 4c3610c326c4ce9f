"""Workstation evaluation: the paper's ROC AUC protocol over backbones × detectors, beside autoencoder peers."""

"""From patches to scores: the TFLite runtime and extractor, the numpy detectors, the bundle, the pipeline."""

"""Calibration on the board: learn a machine's normal sound, choose the threshold, write the bundle (+ scikit-learn)."""

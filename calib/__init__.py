"""Calibration data and calibrators for INT8 post-training quantization."""

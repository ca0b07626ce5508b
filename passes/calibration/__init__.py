"""Calibration: batches from files, token lists, image folders or synthetic inputs, and the statistics the
criteria, compensation and refits read from them."""

"""Inference engines behind one protocol, so the runner never knows which one it drives."""

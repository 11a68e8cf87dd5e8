"""Procedural shape pictures with captions (the default model's training data) and a deterministic analyser."""

"""darkroom.testing"""

"""darkroom.graph"""

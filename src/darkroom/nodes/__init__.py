"""darkroom.nodes"""

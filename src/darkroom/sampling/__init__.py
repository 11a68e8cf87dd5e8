"""darkroom.sampling"""

"""darkroom.metadata"""

"""darkroom.models"""

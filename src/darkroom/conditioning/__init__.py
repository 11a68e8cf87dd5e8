"""darkroom.conditioning"""

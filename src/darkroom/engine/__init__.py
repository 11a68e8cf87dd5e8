"""darkroom.engine"""

"""Flux local provider."""

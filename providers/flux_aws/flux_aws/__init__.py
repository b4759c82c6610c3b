"""Flux AWS provider."""

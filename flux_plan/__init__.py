"""Flux: plan, diff and apply serverless TypeScript functions through pluggable providers."""

__version__ = "0.1.0"

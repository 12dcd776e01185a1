"""Declarative YAML search spaces, shipped as package data."""

"""Generators: turn a rendered prompt into text."""

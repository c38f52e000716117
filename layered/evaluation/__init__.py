"""Evaluation: retrieval metrics on BEIR-format data."""

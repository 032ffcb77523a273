"""Screens pushed over the main view: help, and (in diff.py) the diff of two files."""

"""Widgets, one module per part of the screen."""

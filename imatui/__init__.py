"""imatui: a terminal explorer for llama.cpp importance-matrix (imatrix) files."""

__version__ = "0.1.0"

"""Reading and writing imatrix files: GGUF (llama.cpp's current format) and legacy .dat."""

from imatui.formats.detect import detect_format, is_imatrix_file, load, load_pair
from imatui.formats.write import save

__all__ = ["detect_format", "is_imatrix_file", "load", "load_pair", "save"]

"""`imatui collect`: an imatrix collector for transformers models (torch forward hooks).

names.py maps module names to llama.cpp's GGUF tensor names (gguf's own tables), chunks.py cuts the
text as llama-imatrix does, hooks.py accumulates the statistics on the device, distributed.py is the
torch.distributed glue, run.py the command (checkpoints, resume, progress). Only run/hooks import torch.
"""

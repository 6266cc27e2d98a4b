"""Shared pytest setup: modules live at the repository root and are imported by plain name.

On a machine without a GPU the Triton kernels can only run through Triton's interpreter, and triton
fixes that mode when it is first imported: so it is chosen here, before any test imports kernels/.
"""
import os
import sys

import torch


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

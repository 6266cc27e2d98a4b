"""Shared pytest setup: modules live at the repository root and are imported by plain name.

On a machine without a GPU the Triton kernels can only run through Triton's interpreter, and triton
fixes that mode when it is first imported: so it is chosen here, before any test imports kernels/.
transformers, the reference some tests check against, is imported first, through
transformers_reference.import_transformers: its own dependency named `kernels` must not meet ours.
"""
import os
import sys

import torch

from transformers_reference import ROOT, import_transformers


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
import_transformers()
sys.path.insert(0, ROOT)

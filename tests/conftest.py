"""Shared pytest setup: modules live at the repository root and are imported by plain name."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

"""Make the repository's copy of ``truncated_bptt`` the one tests import, whatever is installed."""
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if sys.path[0] != ROOT:
    sys.path.insert(0, ROOT)

"""Shared pytest fixtures. (The import path is set in pytest.ini: the repository root first, so the
tests import this checkout's ``truncated_bptt`` whatever is installed, then ``tests/``.)"""

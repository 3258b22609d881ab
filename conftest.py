"""Shared pytest fixtures. (The import path is set in pytest.ini: the repository root first, so the
tests import this checkout's ``truncated_bptt`` whatever is installed, then ``tests/``.)"""
import os

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))
# scripts/test.sh sets this for its run in .venv/bench-example: there the transformers tests must run.
REQUIRE_TRANSFORMERS = "TRUNCATED_BPTT_REQUIRE_TRANSFORMERS"


@pytest.fixture(scope="session")
def transformers():
    """HuggingFace transformers (4.34.1 in .venv/bench-example). The supported stacks have none:
    there the test is skipped; in scripts/test.sh's transformers run (``REQUIRE_TRANSFORMERS`` set)
    a missing transformers fails, and the plugin must be this checkout's."""
    required = os.environ.get(REQUIRE_TRANSFORMERS) == "1"
    try:
        import transformers
    except ImportError as err:
        if required:
            pytest.fail(f"{REQUIRE_TRANSFORMERS}=1 but transformers does not import ({err}): run "
                        "these tests in .venv/bench-example (bash scripts/setup_bench_env.sh)")
        pytest.skip("needs transformers: scripts/test.sh runs these tests in .venv/bench-example")
    import truncated_bptt

    plugin = os.path.dirname(os.path.abspath(truncated_bptt.__file__))
    assert plugin == os.path.join(ROOT, "truncated_bptt"), f"the plugin comes from {plugin}, not this checkout"
    return transformers


def pytest_collection_modifyitems(items):
    """Tests that use the ``transformers`` fixture carry the ``transformers`` marker (selected by
    ``-m transformers`` in scripts/test.sh's run in .venv/bench-example)."""
    for item in items:
        if "transformers" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.transformers)

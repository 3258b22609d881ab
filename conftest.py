"""Shared pytest fixtures and corpora. (The import path is set in pytest.ini: the repository root
first, so the tests import this checkout's ``truncated_bptt`` whatever is installed, then
``tests/``.)

Corpora made here, each written by the tests themselves (never copied from elsewhere):

* the *cycle* corpus: one fixed cycle of 11 English words broken into lines of 5-10 words at
  varying places. Predictable given the context, so a tiny model learns it in a few dozen CPU
  updates; ``seed`` shifts the cycle and the line breaks.
* a *dictionary* directory: ``dict.txt`` of the words w0..w39 only, for models built in-process
  (tests/inference_models.py) and splits binarized in-process.
"""
import os
from typing import Dict, List, Tuple

import pytest

from fairseq_commands import preprocess, write_lines

ROOT = os.path.dirname(os.path.abspath(__file__))
# scripts/test.sh sets this for its run in .venv/bench-example: there the transformers tests must run.
REQUIRE_TRANSFORMERS = "TRUNCATED_BPTT_REQUIRE_TRANSFORMERS"

CYCLE_WORDS = "the cat sat on a mat and the dog lay by a log".split()


def cycle_lines(n_lines: int, seed: int = 0) -> List[str]:
    """``n_lines`` lines of the cycle corpus."""
    lines, k = [], seed
    for i in range(n_lines):
        length = 5 + (i * 7 + seed) % 6
        lines.append(" ".join(CYCLE_WORDS[(k + j) % len(CYCLE_WORDS)] for j in range(length)))
        k += length
    return lines


def write_cycle_corpus(root: str, splits: Dict[str, Tuple[int, int]]) -> str:
    """``root/text/{split}.txt`` of ``cycle_lines(*splits[split])`` and fairseq-preprocess's output
    in ``root/data-bin`` (its path is returned)."""
    text, data = os.path.join(root, "text"), os.path.join(root, "data-bin")
    for split, (n_lines, seed) in splits.items():
        write_lines(os.path.join(text, f"{split}.txt"), cycle_lines(n_lines, seed))
    preprocess(text, data, splits=tuple(splits))
    return data


@pytest.fixture(scope="session")
def cycle_text():
    """The cycle corpus's lines: ``cycle_text(n_lines, seed=0) -> [str]``."""
    return cycle_lines


@pytest.fixture(scope="session")
def cycle_corpus():
    """A binarized cycle corpus: ``cycle_corpus(root, {"train": (n_lines, seed), ...}) -> data
    directory`` (the text in ``root/text``)."""
    return write_cycle_corpus


@pytest.fixture(scope="session")
def dictionary_dir(tmp_path_factory):
    """A directory holding only ``dict.txt`` (w0..w39 after fairseq's 4 specials). Read-only."""
    from inference_models import make_dictionary_dir  # (imports fairseq: only when needed)

    return make_dictionary_dir(str(tmp_path_factory.mktemp("dictionary")))


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

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tables (eval, doctor) lay out to the terminal width; tests read their cells, so pin a wide terminal whatever
# the caller's $COLUMNS is. Messages never wrap (soft_wrap); tests that check that pass their own COLUMNS.
os.environ["COLUMNS"] = "200"


@pytest.fixture
def one_thread():
    """torch on one thread for the test (bit-exact comparisons between runs), restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread_module():
    """torch on one thread for a whole test module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

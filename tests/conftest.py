from __future__ import annotations

import pytest
import torch

from core_helpers import EncDec

# Small models run fastest on one thread, and a second thread only adds contention when the machine is
# busy (CI and developer machines here have 2 cores). Benchmarks set their own thread counts.
torch.set_num_threads(1)


@pytest.fixture
def encdec() -> EncDec:
    torch.manual_seed(0)
    return EncDec()

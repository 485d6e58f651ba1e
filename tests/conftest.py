from __future__ import annotations

import pytest
import torch

from core_helpers import EncDec


@pytest.fixture
def encdec() -> EncDec:
    torch.manual_seed(0)
    return EncDec()

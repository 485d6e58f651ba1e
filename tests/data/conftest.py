"""Shared CMUdict fixtures: the real dictionary file is parsed once per test session."""

from __future__ import annotations

import pytest

from partwise.data import G2PData, G2PSplit, load_cmudict, make_g2p_datasets


@pytest.fixture(scope="session")
def cmudict_all_stressed() -> G2PSplit:
    return load_cmudict("all", stress=True)


@pytest.fixture(scope="session")
def g2p_data() -> G2PData:
    return make_g2p_datasets(stress=False)

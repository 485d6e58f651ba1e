"""Decoding throughput of g2p-en's pretrained model on the 12,604 CMUdict test words, side by side.

  (a) g2p-en's own ``G2p.predict``: its numpy code, one word at a time. ``g2p_en.g2p`` is imported
      with NLTK's data lookup answered "present" and ``nltk.download`` made to fail, and its NLTK
      CMUdict (used by ``__call__``'s dictionary look-ups, not by ``predict``) replaced by an empty
      one, so nothing is downloaded. If that import is impossible (no NLTK), a faithful copy of
      ``predict`` (same numpy operations) runs instead, and the output says so.
  (b) partwise greedy decoding, batched (``load_g2p_en().predict``: words in batches of similar
      length, ``greedy_decode`` with g2p-en's limit of 20 steps);
  (c) partwise beam search, beam 5, batched.

(b)'s outputs are checked against (a)'s word for word. Method: one process, one intra-op thread
(``--threads``), the three alternated in each of ``--repeats`` rounds; figures are medians of words
per second, ratios medians of per-round ratios. WER against CMUdict's references (stress kept, as
g2p-en predicts it) is printed for each. Target (product brief): (b) >= 10x (a), identical outputs.

    .venv/bin/python bench/decoding.py [--quick] [--repeats 3] [--batch-size 1024]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _interleave import Gate, interleave, load_line, median, paired  # noqa: E402

from partwise.data import load_cmudict  # noqa: E402
from partwise.metrics import score_g2p  # noqa: E402
from partwise.pretrained import G2P_EN_GRAPHEMES, G2P_EN_PHONEMES, g2p_en_path, load_g2p_en  # noqa: E402


def g2p_en_own() -> tuple[Any, str]:
    """g2p-en's ``G2p`` object, built by its own code without any download; or, if it cannot be
    imported, :class:`FaithfulG2p`. Returns the object and a line saying which."""
    try:
        nltk = importlib.import_module("nltk")
    except ImportError:
        return FaithfulG2p(), "g2p-en could not be imported (no NLTK): (a) is a faithful copy of its predict"
    saved = nltk.data.find, nltk.download

    def no_download(*args: object, **kwargs: object) -> None:
        raise RuntimeError("this benchmark must not download NLTK data")

    nltk.data.find, nltk.download = (lambda *a, **k: "present"), no_download
    try:
        module = importlib.import_module("g2p_en.g2p")
    finally:
        nltk.data.find, nltk.download = saved
    module.cmudict = types.SimpleNamespace(dict=dict)  # only __call__'s dictionary look-ups use it
    return module.G2p(), f"(a) is g2p-en's own G2p.predict ({module.__file__})"


class FaithfulG2p:
    """g2p-en's ``G2p.predict`` (numpy, one word at a time), operation for operation."""

    def __init__(self) -> None:
        with np.load(g2p_en_path()) as v:
            self.v = {k: v[k] for k in v.files}
        self.g2idx = {g: i for i, g in enumerate(G2P_EN_GRAPHEMES)}
        self.idx2p = dict(enumerate(G2P_EN_PHONEMES))

    @staticmethod
    def grucell(x: np.ndarray, h: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray,
                b_hh: np.ndarray) -> np.ndarray:
        rzn_ih, rzn_hh = np.matmul(x, w_ih.T) + b_ih, np.matmul(h, w_hh.T) + b_hh
        k = rzn_ih.shape[-1] * 2 // 3
        rz = 1 / (1 + np.exp(-(rzn_ih[:, :k] + rzn_hh[:, :k])))
        r, z = np.split(rz, 2, -1)
        n = np.tanh(rzn_ih[:, k:] + r * rzn_hh[:, k:])
        return (1 - z) * n + z * h

    def predict(self, word: str) -> list[str]:
        v = self.v
        x = np.take(v["enc_emb"], np.expand_dims([self.g2idx.get(c, 1) for c in [*word, "</s>"]], 0), axis=0)
        h = np.zeros((1, v["enc_w_hh"].shape[-1]), np.float32)
        for t in range(len(word) + 1):
            h = self.grucell(x[:, t, :], h, v["enc_w_ih"], v["enc_w_hh"], v["enc_b_ih"], v["enc_b_hh"])
        dec, preds = np.take(v["dec_emb"], [2], axis=0), []
        for _ in range(20):
            h = self.grucell(dec, h, v["dec_w_ih"], v["dec_w_hh"], v["dec_b_ih"], v["dec_b_hh"])
            pred = (np.matmul(h, v["fc_w"].T) + v["fc_b"]).argmax()
            if pred == 3:
                break
            preds.append(pred)
            dec = np.take(v["dec_emb"], [pred], axis=0)
        return [self.idx2p.get(i, "<unk>") for i in preds]


def gru_flops(words: list[str], predictions: list[list[str]], model: torch.nn.Module) -> float:
    """Floating-point operations of greedy decoding (the matrix products of the GRU cells and the
    output layer): one encoder step per character and ``</s>``, one decoder step per phoneme and the
    end (at most 20). (a) and (b) do exactly these; only how fast they go differs."""
    hidden, emb = model.encoder.rnn.hidden_size, model.encoder.rnn.input_size
    vocab = model.decoder.out.out_features
    cell = 2 * 3 * hidden * (emb + hidden)
    enc = sum(len(w) + 1 for w in words)
    dec = sum(min(len(p) + 1, 20) for p in predictions)
    return float(enc * cell + dec * (cell + 2 * hidden * vocab))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the first 2,000 test words, 2 rounds")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each decodes all words with (a), (b), (c)")
    ap.add_argument("--batch-size", type=int, default=1024, help="words per batch in (b) and (c)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.repeats = 2
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    test = load_cmudict("test", stress=True)
    words, refs = test.words[: 2000 if args.quick else None], test.references[: 2000 if args.quick else None]
    theirs, which = g2p_en_own()
    ours = load_g2p_en()
    outputs: dict[str, list[list[str]]] = {}

    def own(gate: Gate) -> None:
        for _ in range(args.repeats):
            gate.start()
            outputs["a"] = [theirs.predict(w) for w in words]
            gate.lap()

    def batched(key: str, beam: int) -> Any:
        def run(gate: Gate) -> None:
            for _ in range(args.repeats):
                gate.start()
                with torch.inference_mode():
                    outputs[key] = ours.predict(words, batch_size=args.batch_size, beam_size=beam)
                gate.lap()
        return run

    t = interleave({"a": own, "b": batched("b", 1), "c": batched("c", 5)}, args.repeats, threads=args.threads)
    same = sum(x == y for x, y in zip(outputs["a"], outputs["b"], strict=True))
    print(f"decoding: {len(words):,} CMUdict test words, threads={args.threads}, {args.repeats} rounds, batch "
          f"{args.batch_size}; {which}")
    labels = {"a": "(a) g2p-en predict, per word", "b": "(b) partwise greedy, batched",
              "c": "(c) partwise beam 5, batched"}
    flops = gru_flops(words, outputs["a"], ours.model)
    for key, label in labels.items():
        wer = score_g2p(outputs[key], refs)["wer"]
        rate = f"; {flops / median(t[key]) / 1e9:.1f} GFLOP/s" if key != "c" else ""
        print(f"{label:<32}: {len(words) / median(t[key]):9,.0f} words/s ({median(t[key]):.3f} s; WER with stress "
              f"{wer:.1%}{rate})")
    print(f"(b) outputs equal (a)'s: {same:,} / {len(words):,} words")
    print(f"(b) vs (a) words/s (target >= 10x): {paired(t['a'], t['b']):.1f}x; "
          f"(c) vs (a): {paired(t['a'], t['c']):.1f}x")
    print(load_line(load))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"took {time.perf_counter() - start:.0f} s")

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from partwise.data import Batch, BucketBatchSampler, Seq2SeqDataset, Vocab, collate
from partwise.seq2seq._protocol import BOS, EOS, PAD, UNK

PAIRS = [
    (list("cat"), ["K", "AE", "T"]),
    (list("a"), ["AH"]),
    (list("tax"), ["T", "AE", "K", "S"]),
    (list("act"), ["AE", "K", "T"]),
]


@pytest.fixture
def dataset() -> Seq2SeqDataset:
    src = Vocab.build(s for s, _ in PAIRS)
    tgt = Vocab.build(t for _, t in PAIRS)
    return Seq2SeqDataset(PAIRS, src, tgt)


def test_items_frame_source_and_target(dataset: Seq2SeqDataset) -> None:
    item = dataset[0]
    assert item.index == 0
    assert dataset.src_vocab.decode(item.src, strip_special=False) == ["c", "a", "t", "</s>"]
    assert dataset.tgt_vocab.decode(item.tgt, strip_special=False) == [
        "<s>",
        "K",
        "AE",
        "T",
        "</s>",
    ]
    assert dataset[-1].index == 3
    with pytest.raises(IndexError, match="index 4"):
        dataset[4]


def test_lengths_and_default_references(dataset: Seq2SeqDataset) -> None:
    assert dataset.lengths.tolist() == [[4, 4], [2, 2], [4, 5], [4, 4]]
    assert dataset.references[2] == [["T", "AE", "K", "S"]]
    assert dataset.sources[1] == ["a"]


def test_collate_pads_and_shifts(dataset: Seq2SeqDataset) -> None:
    batch = collate([dataset[1], dataset[2]])
    assert batch.src.dtype == torch.long and batch.src_mask.dtype == torch.bool
    assert batch.src.shape == (2, 4) and batch.tgt_in.shape == (2, 5) == batch.tgt_out.shape
    assert batch.src_mask.tolist() == [[True, True, False, False], [True] * 4]
    assert batch.src[0, 2:].tolist() == [PAD, PAD]
    assert batch.tgt_in[:, 0].tolist() == [BOS, BOS]
    assert batch.tgt_out[0, :3].tolist() == [dataset.tgt_vocab.index("AH"), EOS, PAD]
    assert torch.equal(batch.tgt_in[1, 1:], batch.tgt_out[1, :-1])
    assert batch.tgt_out[1, -1].item() == EOS
    assert batch.index.tolist() == [1, 2]
    assert batch.num_tokens == 2 + 5
    assert batch.batch_size == 2


def test_mask_comes_from_lengths_not_token_values() -> None:
    vocab = Vocab(["x"])
    pairs = [(["<pad>", "x"], ["x"]), (["x"], ["x"])]  # a literal "<pad>" token in the data
    batch = collate([Seq2SeqDataset(pairs, vocab, vocab)[i] for i in range(2)])
    assert batch.src_mask.tolist() == [[True, True, True], [True, True, False]]


def test_unknown_tokens_become_unk(dataset: Seq2SeqDataset) -> None:
    other = Seq2SeqDataset([(list("zap"), ["Z", "AE", "P"])], dataset.src_vocab, dataset.tgt_vocab)
    assert other[0].src.tolist()[0] == UNK
    assert other[0].tgt.tolist()[1] == UNK


def test_batch_to_moves_every_tensor(dataset: Seq2SeqDataset) -> None:
    batch = collate([dataset[0], dataset[3]])
    moved = batch.to("meta")
    assert isinstance(moved, Batch)
    tensors = [moved.src, moved.src_mask, moved.tgt_in, moved.tgt_out, moved.index]
    assert all(t.device.type == "meta" for t in tensors)
    assert moved.num_tokens == batch.num_tokens
    assert batch.src.device.type == "cpu"


def test_dataloader_with_bucket_sampler_covers_every_row(dataset: Seq2SeqDataset) -> None:
    sampler = BucketBatchSampler(dataset.lengths, batch_size=3, seed=1)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    seen = sorted(i for batch in loader for i in batch.index.tolist())
    assert seen == [0, 1, 2, 3]


def test_bad_pairs_are_rejected(dataset: Seq2SeqDataset) -> None:
    v = dataset.src_vocab
    with pytest.raises(ValueError, match="no pairs"):
        Seq2SeqDataset([], v, v)
    with pytest.raises(ValueError, match="pair 1"):
        Seq2SeqDataset([(["a"], ["b"]), ("ab", "b")], v, v)
    with pytest.raises(ValueError, match="pair 0"):
        Seq2SeqDataset([(["a"], [])], v, v)
    with pytest.raises(ValueError, match="2 references for 1 pairs"):
        Seq2SeqDataset([(["a"], ["b"])], v, v, references=[[["b"]], [["c"]]])
    with pytest.raises(ValueError, match="empty list"):
        collate([])

from __future__ import annotations

import json

import pytest
import torch

from partwise.data import BucketBatchSampler, G2PData

LENGTHS = torch.randint(1, 30, (1000,), generator=torch.Generator().manual_seed(3))


def _flat(batches: list[list[int]]) -> list[int]:
    return sorted(i for b in batches for i in b)


@pytest.mark.parametrize("shuffle", [True, False])
def test_each_row_once_and_full_batches(shuffle: bool) -> None:
    sampler = BucketBatchSampler(LENGTHS, batch_size=64, shuffle=shuffle, bucket_size_multiplier=4)
    batches = list(sampler)
    assert _flat(batches) == list(range(1000))
    assert len(batches) == len(sampler) == 16
    assert sorted(len(b) for b in batches) == [1000 - 15 * 64] + [64] * 15


def test_drop_last_drops_the_short_batch() -> None:
    sampler = BucketBatchSampler(LENGTHS, batch_size=64, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 15
    assert all(len(b) == 64 for b in batches)


def test_order_depends_only_on_seed_and_epoch() -> None:
    def make(seed: int) -> BucketBatchSampler:
        return BucketBatchSampler(LENGTHS, batch_size=32, seed=seed, bucket_size_multiplier=8)

    a, b = make(0), make(0)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    assert make(0).batches(epoch=0) != make(0).batches(epoch=1)
    assert make(0).batches(epoch=0) != make(1).batches(epoch=0)


def test_global_torch_rng_is_untouched() -> None:
    state = torch.get_rng_state()
    list(BucketBatchSampler(LENGTHS, batch_size=32))
    assert torch.equal(state, torch.get_rng_state())


def test_finished_epoch_moves_on_and_set_epoch_of_same_epoch_keeps_place() -> None:
    sampler = BucketBatchSampler(LENGTHS, batch_size=100)
    first = list(sampler)
    assert sampler.epoch == 1
    second = list(sampler)
    assert first != second and second == sampler.batches(epoch=1)
    it = iter(sampler)
    next(it)
    sampler.set_epoch(2)  # the current epoch: position kept
    assert sampler.state_dict()["batches_consumed"] == 1
    sampler.set_epoch(5)
    assert sampler.state_dict()["batches_consumed"] == 0


def test_resume_mid_epoch_gives_the_remaining_batches() -> None:
    original = BucketBatchSampler(LENGTHS, batch_size=50, seed=7)
    original.set_epoch(2)
    full = original.batches()
    it = iter(original)
    taken = [next(it) for _ in range(6)]
    state = json.loads(json.dumps(original.state_dict()))

    resumed = BucketBatchSampler(LENGTHS, batch_size=50, seed=7)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    rest = list(resumed)
    assert taken + rest == full
    assert resumed.epoch == 3


def test_load_state_from_other_settings_is_refused() -> None:
    state = BucketBatchSampler(LENGTHS, batch_size=50).state_dict()
    with pytest.raises(ValueError, match="batch_size=50"):
        BucketBatchSampler(LENGTHS, batch_size=64).load_state_dict(state)
    with pytest.raises(ValueError, match="batches_consumed=99"):
        BucketBatchSampler(LENGTHS, batch_size=50).load_state_dict(
            {**state, "batches_consumed": 99}
        )


def test_unshuffled_batches_are_sorted_lexicographically() -> None:
    lengths = [[3, 1], [1, 5], [3, 0], [1, 2], [2, 2]]
    sampler = BucketBatchSampler(lengths, batch_size=2, shuffle=False)
    assert list(sampler) == [[3, 1], [4, 2], [0]]


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="batch_size=0"):
        BucketBatchSampler(LENGTHS, batch_size=0)
    with pytest.raises(ValueError, match="bucket_size_multiplier=0"):
        BucketBatchSampler(LENGTHS, batch_size=4, bucket_size_multiplier=0)
    with pytest.raises(ValueError, match=r"shape \(0,\)"):
        BucketBatchSampler([], batch_size=4)
    with pytest.raises(ValueError, match=r"shape \(2, 2, 2\)"):
        BucketBatchSampler(torch.ones(2, 2, 2), batch_size=4)


def _padding_fraction(lengths: torch.Tensor, batches: list[list[int]]) -> float:
    """Share of padded positions over source and target of all batches."""
    sizes = torch.tensor([len(b) for b in batches])
    rows = lengths.index_select(0, torch.tensor([i for b in batches for i in b]))
    batch_of_row = torch.repeat_interleave(torch.arange(len(batches)), sizes)
    longest = torch.zeros(len(batches), rows.shape[1], dtype=rows.dtype)
    longest.scatter_reduce_(0, batch_of_row[:, None].expand_as(rows), rows, "amax")
    return 1 - rows.sum().item() / (longest * sizes[:, None]).sum().item()


def test_bucketing_cuts_padding_on_cmudict(g2p_data: G2PData) -> None:
    lengths = g2p_data.train.lengths
    bucketed = BucketBatchSampler(lengths, batch_size=64, seed=0)
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))
    random_batches = [b.tolist() for b in order.split(64)]
    bucketed_pad = _padding_fraction(lengths, bucketed.batches())
    random_pad = _padding_fraction(lengths, random_batches)
    assert random_pad > 0.3  # random CMUdict batches are ~40% padding
    assert bucketed_pad < random_pad / 5

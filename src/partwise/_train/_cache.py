"""Frozen-encoder output cache: a frozen, deterministic encoder runs once per dataset, not every step.

A task opts in by providing, besides ``loss`` and ``evaluate``:

* ``encoder_of(model) -> nn.Module`` — the module whose outputs are cached;
* ``encode(model, batch)`` — its output for a batch;
* ``loss_from_encoding(model, batch, encoding, ctx) -> Tensor`` — the loss given that output;
* ``split_encoding(encoding, batch) -> list[dict[str, Tensor]]`` and
  ``merge_encoding(rows, batch) -> encoding`` — per-row pieces and back (rows may differ in length
  along their first dimension);
* ``row_ids(batch) -> Tensor`` — a stable id per dataset row (``Batch.index`` for seq2seq);
* optionally ``merge_padded(columns, batch) -> encoding``, where ``columns`` maps each piece's name to
  ``(values, lengths)``: ``values`` ``(B, L, ...)`` holds the batch's rows padded with zeros to the
  longest, ``lengths`` ``(B,)`` their lengths. It must give what ``merge_encoding`` gives for the same
  rows; with it a lookup is a few vectorised gathers instead of a Python loop over rows.

**The build costs about one encoder pass.** Rows are encoded shortest first (when the dataset tells
its source lengths: a ``src_lengths`` attribute, as partwise's ``Seq2SeqDataset`` and
``partwise.hf.Seq2SeqLMDataset`` have, also through ``torch.utils.data.Subset``), so a batch pads
little, in batches as large as a memory budget allows (``build_bytes`` of working memory, estimated
from the output size of a probe batch). The checks are folded in: the probe (the shortest few rows)
is encoded twice and must agree bit for bit, then once more beside the longest row, padded to its
length, and must agree again (an encoder whose output depends on padding or on the other rows of a
batch is refused); row ids must be unique. On the first training batch the cached outputs are
compared with live ones.

The cache is used only when every parameter of the encoder is frozen and every module of it is in
eval mode. Past ``spill_bytes`` its rows live in memory-mapped files (``<spill_dir>/<name>.npy``,
``rank<r>/`` under DDP).

**Under DDP the cache is keyed by row and gathered.** The trainer gives each rank a slice of every
global batch, so a rank sees different rows every epoch; rather than pin rows to ranks (which would
change the data order and with it the losses), each rank encodes a 1/world share of the rows
(every world-th of the length-sorted rows, so shares cost alike), and the shares are all-gathered so
that every rank can look up any row. Training then follows exactly the data order, and so the losses,
of a run without the cache.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset, Subset

from .._errors import CacheRefused, ConfigError
from ._distributed import all_true

__all__ = ["EncoderCache", "CacheRefused", "PhaseCache", "supports_cache", "cache_blockers", "source_lengths"]
CACHE_MODES = ("auto", "on", "off")

_METHODS = ("encoder_of", "encode", "loss_from_encoding", "split_encoding", "merge_encoding", "row_ids")
_PROBE_ROWS = 4  # rows encoded twice to check determinism
_WORK_PER_OUTPUT = 8  # working memory of an encoder pass, in multiples of its output's size (an estimate)

Rows = list[dict[str, Tensor]]


def supports_cache(task: Any) -> bool:
    return all(callable(getattr(task, m, None)) for m in _METHODS)


def cache_blockers(task: Any, model: nn.Module, world: int = 1) -> list[str]:
    """Why the encoder's outputs cannot be cached right now (empty: they can)."""
    if not supports_cache(task):
        missing = [m for m in _METHODS if not callable(getattr(task, m, None))]
        return [f"the task does not support caching (missing {', '.join(missing)})"]
    out = []
    encoder = task.encoder_of(model)
    if any(p.requires_grad for p in encoder.parameters()):
        out.append("the encoder has trainable parameters")
    if any(m.training for m in encoder.modules()):
        out.append("part of the encoder is in train mode (frozen with norm/dropout='train'?)")
    return out


def source_lengths(dataset: Any) -> Tensor | None:
    """Each row's source length, if the dataset tells it (``src_lengths``; through ``Subset`` too).

    Examples:
        >>> from torch.utils.data import Subset
        >>> class D(list):
        ...     src_lengths = torch.tensor([3, 1, 2])
        >>> source_lengths(Subset(D([0, 1, 2]), [2, 0])).tolist()
        [2, 3]
    """
    if isinstance(dataset, Subset):
        inner = source_lengths(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    lengths = getattr(dataset, "src_lengths", None)
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths).reshape(-1)
    return lengths if len(lengths) == len(dataset) else None


def _rows_equal(a: Rows, b: Rows, exact: bool) -> bool:
    for ra, rb in zip(a, b, strict=True):
        for k in ra:
            x, y = ra[k].float(), rb[k].float()
            if x.shape != y.shape:
                return False
            if not (torch.equal(x, y) if exact else torch.allclose(x, y, rtol=1e-4, atol=1e-5)):
                return False
    return True


@dataclass
class _Column:
    """One piece of every row, rows back to back, then one row of zeros (what padding reads): row
    ``s`` is ``flat[offsets[s]:offsets[s + 1]]``."""

    flat: Tensor
    offsets: Tensor

    def gather(self, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Rows ``slots`` padded with zeros to the longest: ``(values (B, L, ...), lengths (B,))``."""
        start, lengths = self.offsets[slots], self.offsets[slots + 1] - self.offsets[slots]
        steps = torch.arange(int(lengths.max()) if len(lengths) else 0)
        index = torch.where(steps[None, :] < lengths[:, None], start[:, None] + steps[None, :], len(self.flat) - 1)
        return self.flat.index_select(0, index.reshape(-1)).reshape(*index.shape, *self.flat.shape[1:]), lengths

    def rows_only(self) -> Tensor:
        """``flat`` without the zero row."""
        return self.flat[: len(self.flat) - 1]


def _as_column(pieces: Sequence[Tensor]) -> _Column:
    """Rows (each ``(n_i, ...)``, or a scalar) into one :class:`_Column`."""
    sizes = torch.tensor([t.shape[0] if t.dim() else 1 for t in pieces], dtype=torch.long)
    offsets = torch.zeros(len(pieces) + 1, dtype=torch.long)
    torch.cumsum(sizes, 0, out=offsets[1:])
    rows = [t if t.dim() else t.reshape(1) for t in pieces]
    return _Column(torch.cat([*rows, rows[0].new_zeros((1, *rows[0].shape[1:]))]), offsets)


class EncoderCache:
    """Per-row encoder outputs for one dataset, looked up by row id (``Trainer.cache``); how a task
    opts in and what the cache guarantees follow."""

    def __init__(self, task: Any, columns: dict[str, _Column], ids: Tensor):
        self.task, self.columns = task, columns
        self._sorted_ids, self._slot_of_sorted = torch.sort(ids.to(torch.long))  # row id -> slot by binary search
        repeated = self._sorted_ids[1:][self._sorted_ids[1:] == self._sorted_ids[:-1]]
        if len(repeated):
            raise CacheRefused(f"row id {repeated[0].item()} is given to more than one row of the training data (a "
                               "ConcatDataset of datasets that each number their rows from 0?): rows would get other "
                               "rows' encodings")
        self.verified = False

    def __len__(self) -> int:
        return len(self._sorted_ids)

    @property
    def nbytes(self) -> int:
        return sum(c.flat.numel() * c.flat.element_size() for c in self.columns.values())

    @classmethod
    @torch.no_grad()
    def build(cls, task: Any, model: nn.Module, dataset: Dataset[Any], collate_fn: Callable[[list[Any]], Any] | None,
              device: torch.device, *, build_bytes: int | None = None, batch_size: int | None = None,
              spill_dir: str | Path | None = None, spill_bytes: int = 2 << 30, rank: int = 0,
              world: int = 1) -> EncoderCache:
        """Encode every row of ``dataset`` once (this rank's share under DDP, then gathered).

        Args:
            build_bytes: working-memory budget of one build batch (estimated as 8 x the batch's
                encoder output); the largest batches under it are used. ``None``: 4 MiB on a CPU
                (batches that stay in its caches run fastest), a quarter of the free memory on CUDA.
            batch_size: at most this many rows per build batch (``None``: as the budget allows).
            spill_dir, spill_bytes: past ``spill_bytes`` the rows go to memory-mapped files there.
            rank, world: this process's rank and the number of ranks.

        Raises:
            CacheRefused: the encoder is not deterministic (two passes over the probe rows differ), a
                row's output depends on its batch company (padding without a mask), the batches carry
                no row ids, or two rows share an id.
        """
        from torch.utils.data.dataloader import default_collate

        collate = collate_fn or default_collate
        lengths = source_lengths(dataset)
        order = torch.argsort(lengths, stable=True) if lengths is not None else torch.arange(len(dataset))  # type: ignore[arg-type]
        mine = order[rank::world].tolist()
        builder = _Builder(task, model, dataset, collate, device)
        per_token = builder.probe(mine[:_PROBE_ROWS], lengths, int(order[-1]) if len(order) else None)
        budget = build_bytes if build_bytes is not None else _default_budget(device)
        for chunk in _chunks(mine, lengths, max(1, budget // (_WORK_PER_OUTPUT * per_token)), batch_size):
            builder.add(chunk)
        columns, ids = builder.columns()
        if world > 1:
            columns, ids = _gather(columns, ids, world, device)
        if spill_dir is not None and sum(c.flat.numel() * c.flat.element_size()
                                         for c in columns.values()) > spill_bytes:
            where = Path(spill_dir) / (f"rank{rank}" if world > 1 else "")
            columns = {k: _Column(_spill(c.flat, where / f"{k}.npy"), c.offsets) for k, c in columns.items()}
        return cls(task, columns, ids)

    def slots(self, ids: Tensor) -> Tensor:
        """Where rows ``ids`` sit in the columns; :class:`CacheRefused` if one is not cached."""
        ids = ids.detach().to("cpu", torch.long).reshape(-1)
        pos = torch.searchsorted(self._sorted_ids, ids).clamp_(max=max(len(self) - 1, 0))
        found = self._sorted_ids[pos] == ids if len(self) else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(found.all()):
            missing = ids[~found][0].item()
            raise CacheRefused(f"row {missing} is not in the cache: the training data changed after it was built")
        return self._slot_of_sorted[pos]

    def rows(self, ids: Iterable[int]) -> Rows:
        """The cached pieces of rows ``ids``, one dict per row (views, on the CPU)."""
        slots = self.slots(torch.as_tensor(list(ids), dtype=torch.long)).tolist()
        return [{k: c.flat[c.offsets[s]: c.offsets[s + 1]] for k, c in self.columns.items()} for s in slots]

    def lookup(self, batch: Any, device: torch.device) -> Any:
        """The cached encoding of ``batch`` on ``device``, as the task's ``encode`` would give it."""
        slots = self.slots(self.task.row_ids(batch))
        merge_padded = getattr(self.task, "merge_padded", None)
        if callable(merge_padded):
            columns = {}
            for k, c in self.columns.items():
                values, lengths = c.gather(slots)
                columns[k] = (values.to(device, non_blocking=True), lengths.to(device, non_blocking=True))
            return merge_padded(columns, batch)
        rows = [{k: c.flat[c.offsets[s]: c.offsets[s + 1]].to(device, non_blocking=True)
                 for k, c in self.columns.items()} for s in slots.tolist()]
        return self.task.merge_encoding(rows, batch)

    @torch.no_grad()
    def verify(self, model: nn.Module, batch: Any, device: torch.device) -> None:
        """Compare cached and live outputs on one batch; raise :class:`CacheRefused` if they differ."""
        cached = self.rows(self.task.row_ids(batch).tolist())
        live = [{k: v.cpu() for k, v in r.items()}
                for r in self.task.split_encoding(self.task.encode(model, batch), batch)]
        if not _rows_equal(live, cached, exact=False):
            raise CacheRefused("cached encoder outputs differ from live ones on the first training batch "
                               "(the encoder or the data changed after the cache was built)")
        self.verified = True


class PhaseCache:
    """The frozen-encoder cache through a plan's phases, for any training loop (partwise's Trainer,
    ``partwise.hf.PartwiseSeq2SeqTrainer``): the one place that decides when a cache is built, kept,
    dropped, refused or verified.

    Call :meth:`enter_phase` once a phase's freeze state is in force: the cache is kept while the
    encoder stays frozen, built when it has just been frozen, dropped when it trains. Then, per
    training batch, :meth:`encoding` gives the batch's cached encoder outputs, or ``None`` when no
    cache is in use (the loop runs the encoder itself). The first batch after a build is compared
    with live outputs.

    ``mode="auto"`` uses the cache whenever it can and otherwise falls back to running the encoder,
    with one warning saying why; ``"on"`` makes it a requirement (a :class:`~partwise.ConfigError`
    says why not); ``"off"`` never caches. Under DDP every rank encodes its share of the rows, the
    shares are gathered, and every decision is taken by all ranks alike.

    Examples:
        >>> PhaseCache(task=None, parts=None, mode="sometimes")
        Traceback (most recent call last):
        ...
        partwise._errors.ConfigError: 1 problem(s): cache: 'sometimes' must be 'auto', 'on' or 'off'
    """

    def __init__(self, task: Any, parts: Any, mode: str = "auto", *, device: torch.device | str = "cpu",
                 rank: int = 0, world: int = 1, spill_dir: str | Path | None = None):
        if mode not in CACHE_MODES:
            raise ConfigError([f"cache: {mode!r} must be 'auto', 'on' or 'off'"])
        self.task, self.parts, self.mode = task, parts, mode
        self.device, self.rank, self.world = torch.device(device), rank, world
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.cache: EncoderCache | None = None
        self.refusals: list[str] = []  # why the cache was not used, oldest first (each warned once)

    def enter_phase(self, dataset: Dataset[Any] | None, collate_fn: Callable[[list[Any]], Any] | None
                    ) -> EncoderCache | None:
        """The cache for the phase now in force (``None``: none; the encoder runs every step)."""
        if self.mode == "off" or dataset is None:
            self.cache = None
            return None
        self.parts.train()  # the modes training will run in
        model, task = self.parts.model, self.task
        if supports_cache(task) and any(p.requires_grad for p in task.encoder_of(model).parameters()):
            self.cache = None  # the encoder trains in this phase: nothing to cache (a later freeze rebuilds)
            return None
        blockers = cache_blockers(task, model, self.world)
        if blockers:
            if self.mode == "on":
                raise ConfigError([f"cache: 'on', but the encoder's outputs cannot be cached: {'; '.join(blockers)}"])
            self.cache = None
            return None
        if self.cache is None and (isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__")):
            self._refuse(CacheRefused("the training data is an iterable dataset: its rows cannot be encoded ahead "
                                      "(give a map-style dataset, with a row id per example, to use the cache)"))
            return None
        if self.cache is None:
            refused: CacheRefused | None = None
            try:
                self.cache = EncoderCache.build(task, model, dataset, collate_fn, self.device,
                                                spill_dir=self.spill_dir, rank=self.rank, world=self.world)
            except CacheRefused as e:
                refused = e
            if not all_true(refused is None, self.world, self.device):  # every rank decides alike
                self.cache = None
                self._refuse(refused or CacheRefused("another rank refused the cache"))
        return self.cache

    def reset(self) -> None:
        """Forget the cache (a new ``fit``/``train`` call, whose training data may be another)."""
        self.cache = None

    def check(self, batch: Any) -> bool:
        """Whether the cache is in use for ``batch``: on the first batch after a build, cached and live
        outputs are compared first (all ranks must agree, or training goes on without the cache)."""
        cache = self.cache
        if cache is None:
            return False
        if not cache.verified:
            refused: CacheRefused | None = None
            try:
                cache.verify(self.parts.model, batch, self.device)
            except CacheRefused as e:
                refused = e
            if not all_true(refused is None, self.world, self.device):
                self.cache = None
                self._refuse(refused or CacheRefused("cached and live encoder outputs differ on another rank"))
                return False
        return True

    def encoding(self, batch: Any) -> Any:
        """The cached encoding of ``batch`` on the device (:meth:`check` first), or ``None`` when no
        cache is in use: the loop runs the encoder itself."""
        if not self.check(batch):
            return None
        cache = self.cache
        return cache.lookup(batch, self.device) if cache is not None else None

    def _refuse(self, reason: CacheRefused) -> None:
        """No cache (a warning says why, once per reason), or a ConfigError when ``mode="on"``."""
        if self.mode == "on":
            raise ConfigError([f"cache: 'on', but {reason}"]) from None
        if str(reason) not in self.refusals:
            self.refusals.append(str(reason))
            warnings.warn(f"frozen-encoder cache not used: {reason}", RuntimeWarning, stacklevel=4)


EncoderCache.__doc__ = f"{EncoderCache.__doc__}\n{__doc__}"  # the protocol is documented once, above


class _Builder:
    """Encodes batches of rows and keeps their pieces on the CPU."""

    def __init__(self, task: Any, model: nn.Module, dataset: Dataset[Any], collate: Callable[[list[Any]], Any],
                 device: torch.device):
        self.task, self.model, self.dataset, self.collate, self.device = task, model, dataset, collate, device
        self.pieces: dict[str, list[Tensor]] = {}
        self.ids: list[Tensor] = []

    def encode(self, rows: list[int]) -> tuple[Any, Rows]:
        from ._loader import move_to

        batch = move_to(self.collate([self.dataset[i] for i in rows]), self.device)
        return batch, self.task.split_encoding(self.task.encode(self.model, batch), batch)

    def probe(self, rows: list[int], lengths: Tensor | None, other: int | None) -> int:
        """Encode ``rows`` twice (bit-identical, or :class:`CacheRefused`), then once more beside row
        ``other`` (the longest): a row's output must not depend on its batch company or on padding
        (or :class:`CacheRefused`). Keeps the rows and returns the encoder output's bytes per token
        (per row when lengths are unknown)."""
        if not rows:
            return 1
        batch, first = self.encode(rows)
        _, again = self.encode(rows)
        if not _rows_equal(first, again, exact=True):
            raise CacheRefused("the encoder is not deterministic: two passes over the same batch differ "
                               "(a random layer active, or random input augmentation); train without the cache")
        if other is not None and other not in rows:
            _, beside = self.encode([*rows, other])
            if not _rows_equal(first, beside[: len(rows)], exact=False):
                raise CacheRefused("the encoder's output for a row depends on the other rows of its batch (its "
                                   "padding is not masked?): cached rows would differ from the rows trained live")
        self.keep(batch, first)
        out_bytes = sum(t.numel() * t.element_size() for r in first for t in r.values())
        tokens = int(lengths[rows].sum()) if lengths is not None else len(rows)
        return max(1, out_bytes // max(tokens, 1))

    def add(self, rows: list[int]) -> None:
        self.keep(*self.encode(rows))

    def keep(self, batch: Any, rows: Rows) -> None:
        try:
            ids = self.task.row_ids(batch)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise CacheRefused(f"the batches carry no row ids ({e})") from None
        self.ids.append(torch.as_tensor(ids).detach().cpu().reshape(-1))
        for row in rows:
            for k, t in row.items():
                self.pieces.setdefault(k, []).append(t.detach().cpu())

    def columns(self) -> tuple[dict[str, _Column], Tensor]:
        ids = torch.cat(self.ids) if self.ids else torch.zeros(0, dtype=torch.long)
        return {k: _as_column(ts) for k, ts in self.pieces.items()}, ids


def _default_budget(device: torch.device) -> int:
    """Working memory for one build batch when none is given (see :meth:`EncoderCache.build`)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return 4 << 20


def _chunks(rows: list[int], lengths: Tensor | None, token_budget: int, max_rows: int | None
            ) -> Iterable[list[int]]:
    """``rows`` (after the probe's) in consecutive batches whose padded size (rows x longest) stays
    within ``token_budget`` (rows count one token each when lengths are unknown)."""
    start = min(_PROBE_ROWS, len(rows))
    longest = lengths.tolist() if lengths is not None else None
    chunk: list[int] = []
    width = 0
    for i in rows[start:]:
        w = max(width, longest[i] if longest is not None else 1)
        if chunk and ((len(chunk) + 1) * w > token_budget or (max_rows is not None and len(chunk) >= max_rows)):
            yield chunk
            chunk, w = [], (longest[i] if longest is not None else 1)
        chunk.append(i)
        width = w
    if chunk:
        yield chunk


def _gather(columns: dict[str, _Column], ids: Tensor, world: int, device: torch.device
            ) -> tuple[dict[str, _Column], Tensor]:
    """Every rank's rows on every rank (rank 0's first): one all-gather per tensor."""
    ids_all = _all_gather_rows(ids, world, device)
    out = {}
    for k in sorted(columns):  # the same names on every rank (each holds >= 1 row: rows >= world)
        c = columns[k]
        sizes = _all_gather_rows(c.offsets.diff(), world, device)
        flat = _all_gather_rows(c.rows_only(), world, device)
        offsets = torch.zeros(len(sizes) + 1, dtype=torch.long)
        torch.cumsum(sizes, 0, out=offsets[1:])
        out[k] = _Column(torch.cat([flat, flat.new_zeros((1, *flat.shape[1:]))]), offsets)
    return out, ids_all


def _all_gather_rows(t: Tensor, world: int, device: torch.device) -> Tensor:
    """``t`` of every rank concatenated along dim 0 (ranks may hold different numbers of rows)."""
    comm = device if tdist.get_backend() == "nccl" else torch.device("cpu")
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=comm)
    counts = [torch.zeros_like(n) for _ in range(world)]
    tdist.all_gather(counts, n)
    most = int(max(c.item() for c in counts))
    padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=comm)
    padded[: t.shape[0]] = t.to(comm)
    parts = [torch.empty_like(padded) for _ in range(world)]
    tdist.all_gather(parts, padded)
    return torch.cat([p[: int(c.item())].cpu() for p, c in zip(parts, counts, strict=True)])


def _spill(flat: Tensor, path: Path) -> Tensor:
    """``flat`` written to ``path`` (a ``.npy`` file) and read back memory-mapped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = flat.view(torch.int16) if flat.dtype == torch.bfloat16 else flat  # numpy has no bfloat16
    array = np.lib.format.open_memmap(path, mode="w+", dtype=raw.numpy().dtype, shape=tuple(raw.shape))
    array[...] = raw.numpy()
    array.flush()
    mapped = torch.from_numpy(np.lib.format.open_memmap(path, mode="r+"))
    return mapped.view(torch.bfloat16) if flat.dtype == torch.bfloat16 else mapped

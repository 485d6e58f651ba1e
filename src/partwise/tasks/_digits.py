"""The ``digits_cycle`` task kind: a frozen encoder inside the loss, on scikit-learn's 8×8 digits.

Phase "autoencoder" trains ``encoder`` and ``decoder`` on ``MSE(D(E(x)), x)``. Every other phase is a
cycle phase: ``MSE(E(G(E(x))), E(x))`` trains a fresh ``generator`` *through* the frozen encoder
(input → encoder → X → generator → Y → encoder → Z, loss(Z, X)). The first ``E(x)`` can come from
the frozen-encoder cache; the second runs live, so the generator receives its gradient.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from .._errors import ConfigError
from .._train._loader import ShuffledBatches
from .._train._task import StepContext
from ..recipe import DigitsModelArgs, DigitsTaskArgs, Kind, KindData, training_subset

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = [
    "DigitsBatch", "DigitsCycle", "DigitsCycleKind", "DigitsCycleTask", "DigitsDataset",
    "collate_digits", "digits_splits", "seeded_reset",
]

PIXELS = 64  # 8 x 8 images, flattened


# -- data -----------------------------------------------------------------------------------------
@dataclass
class DigitsBatch:
    """``x``: (B, 64) pixels in [0, 1]; ``index``: (B,) row indices in ``load_digits()``."""

    x: Tensor
    index: Tensor

    def to(self, device: torch.device | str) -> DigitsBatch:
        return DigitsBatch(self.x.to(device), self.index.to(device))


class DigitsDataset(Dataset[tuple[Tensor, int]]):
    """Digit images as rows of 64 pixels, each item ``(pixels, index in load_digits())``."""

    def __init__(self, pixels: Tensor, index: Tensor):
        if pixels.dim() != 2 or pixels.shape[1] != PIXELS or len(pixels) != len(index):
            raise ValueError(f"DigitsDataset: pixels {tuple(pixels.shape)} and index {tuple(index.shape)} "
                             f"must be (N, {PIXELS}) and (N,)")
        self.pixels, self.index = pixels, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.pixels[i], int(self.index[i])


def collate_digits(items: Sequence[tuple[Tensor, int]]) -> DigitsBatch:
    """Stack dataset items into a :class:`DigitsBatch`.

    Examples:
        >>> batch = collate_digits([(torch.zeros(64), 3), (torch.ones(64), 7)])
        >>> tuple(batch.x.shape), batch.index.tolist()
        ((2, 64), [3, 7])
    """
    return DigitsBatch(torch.stack([x for x, _ in items]), torch.tensor([i for _, i in items], dtype=torch.long))


def digits_splits(limit: int | None = None) -> tuple[DigitsDataset, DigitsDataset, DigitsDataset]:
    """Train, dev and test splits of scikit-learn's bundled digits (1,797 images), pixels / 16.

    The split is fixed by the row index: ``index % 10 == 9`` → test, ``== 8`` → dev, else train.
    ``limit`` keeps the first N rows of each split.

    Examples:
        >>> train, dev, test = digits_splits()
        >>> len(train), len(dev), len(test)
        (1439, 179, 179)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(f"data.name 'digits' needs scikit-learn ({e}); install it with "
                          "pip install 'partwise[digits]'") from None
    if limit is not None and limit < 1:
        raise ValueError(f"digits_splits: limit={limit!r} must be a positive number of rows (data.limit)")
    pixels = torch.from_numpy(load_digits().data).float() / 16.0
    index = torch.arange(len(pixels))
    rest = index % 10
    out = []
    for mask in (rest < 8, rest == 8, rest == 9):
        rows = index[mask][:limit]
        out.append(DigitsDataset(pixels[rows], rows))
    return out[0], out[1], out[2]


# -- model ----------------------------------------------------------------------------------------
def seeded_reset(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialise ``module`` in place (every ``reset_parameters``) from ``seed``; the global RNG is
    left as it was. Two modules of one architecture reset with one seed are equal.

    Examples:
        >>> a, b = seeded_reset(nn.Linear(3, 2), 5), seeded_reset(nn.Linear(3, 2), 5)
        >>> torch.equal(a.weight, b.weight)
        True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return module


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"DigitsCycle: {name}={value!r} must be a positive integer (model.args.{name})")
    return value


def _image_head(latent: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, PIXELS), nn.Sigmoid())


class DigitsCycle(nn.Module):
    """Three parts: ``encoder`` (64 → hidden → latent, with BatchNorm1d and Dropout), ``decoder`` and
    ``generator`` (latent → hidden → 64 pixels, sigmoid). ``seed`` initialises the generator alone
    (see :func:`seeded_reset`), so its untrained state can be rebuilt for comparison.

    Examples:
        >>> model = DigitsCycle(latent=8, hidden=32)
        >>> [name for name, _ in model.named_children()], tuple(model(torch.rand(4, 64)).shape)
        (['encoder', 'decoder', 'generator'], (4, 64))
    """

    def __init__(self, latent: int = 16, hidden: int = 64, dropout: float = 0.1, seed: int = 0):
        super().__init__()
        latent, hidden = _positive_int(latent, "latent"), _positive_int(hidden, "hidden")
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"DigitsCycle: dropout={dropout!r} must be a number in [0, 1) (model.args.dropout)")
        self.encoder = nn.Sequential(nn.Linear(PIXELS, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                     nn.Dropout(dropout), nn.Linear(hidden, latent))
        self.decoder = _image_head(latent, hidden)
        self.generator = seeded_reset(_image_head(latent, hidden), seed)

    def forward(self, x: Tensor) -> Tensor:
        """The autoencoder's reconstruction ``D(E(x))``."""
        return self.decoder(self.encoder(x))


# -- task -----------------------------------------------------------------------------------------
class _CycleModel(Protocol):
    encoder: Any
    decoder: Any
    generator: Any


def _cycle(model: nn.Module) -> _CycleModel:
    """``model`` seen through the children the cycle task needs (``encoder``, ``decoder``, ``generator``)."""
    return cast(_CycleModel, model)


class DigitsCycleTask:
    """Autoencoder loss in ``autoencoder_phases``, the latent cycle loss in every other phase.

    Models need ``encoder``, ``decoder`` and ``generator`` children; batches are :class:`DigitsBatch`.
    ``seed`` rebuilds the untrained generator that :meth:`evaluate` compares with.

    Examples:
        >>> task, model = DigitsCycleTask(), DigitsCycle()
        >>> batch = collate_digits([(torch.rand(64), i) for i in range(4)])
        >>> task.loss(model, batch, StepContext(0, 0, "cycle")).backward()
        >>> _cycle(model).generator[0].weight.grad is not None
        True
    """

    metrics = ("recon_mse", "cycle_loss", "pixel_mse", "untrained_cycle_loss", "untrained_pixel_mse")

    def __init__(self, autoencoder_phases: Sequence[str] = ("autoencoder",), seed: int = 0):
        if isinstance(autoencoder_phases, str) or not all(isinstance(p, str) for p in autoencoder_phases):
            raise TypeError(f"autoencoder_phases={autoencoder_phases!r} must be a list of phase names "
                            "(task.args.autoencoder_phases), e.g. [autoencoder]")
        self.autoencoder_phases, self.seed = tuple(autoencoder_phases), seed

    def is_autoencoder_phase(self, phase: str) -> bool:
        return phase in self.autoencoder_phases

    def loss(self, model: nn.Module, batch: DigitsBatch, ctx: StepContext) -> Tensor:
        return self.loss_from_encoding(model, batch, self.encode(model, batch), ctx)

    # -- frozen-encoder cache protocol (see partwise.EncoderCache) ------------------------------------
    def encoder_of(self, model: nn.Module) -> nn.Module:
        return _cycle(model).encoder

    def encode(self, model: nn.Module, batch: DigitsBatch) -> Tensor:
        return _cycle(model).encoder(batch.x)

    def loss_from_encoding(self, model: nn.Module, batch: DigitsBatch, latent: Tensor, ctx: StepContext) -> Tensor:
        """``MSE(D(X), x)`` in an autoencoder phase, else ``MSE(E(G(X)), X)``, with ``X = E(x)``."""
        if self.is_autoencoder_phase(ctx.phase):
            return F.mse_loss(_cycle(model).decoder(latent), batch.x)
        return F.mse_loss(_cycle(model).encoder(_cycle(model).generator(latent)), latent)

    def split_encoding(self, latent: Tensor, batch: DigitsBatch) -> list[dict[str, Tensor]]:
        return [{"latent": latent[i : i + 1]} for i in range(len(latent))]

    def merge_encoding(self, rows: list[dict[str, Tensor]], batch: DigitsBatch) -> Tensor:
        return torch.cat([r["latent"] for r in rows])

    def row_ids(self, batch: DigitsBatch) -> Tensor:
        return batch.index

    # -- evaluation -----------------------------------------------------------------------------
    def untrained_generator(self, model: nn.Module) -> nn.Module:
        """A copy of ``_cycle(model).generator`` re-initialised from ``seed``: where the cycle phase starts."""
        fresh = seeded_reset(copy.deepcopy(_cycle(model).generator).cpu(), self.seed)
        return fresh.to(next(_cycle(model).generator.parameters()).device).eval()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Any, dataset: Any = None) -> dict[str, float]:
        """Per-element MSEs: ``recon_mse`` (D(E(x)) vs x), ``cycle_loss`` (E(G(E(x))) vs E(x)),
        ``pixel_mse`` (G(E(x)) vs x), and the last two for the untrained generator."""
        sums = dict.fromkeys(
            ("recon_mse", "cycle_loss", "pixel_mse", "untrained_cycle_loss", "untrained_pixel_mse"), 0.0)
        pixels = latents = 0
        untrained = self.untrained_generator(model)
        for batch in batches:
            x = batch.x
            z = _cycle(model).encoder(x)
            sums["recon_mse"] += float(F.mse_loss(_cycle(model).decoder(z), x, reduction="sum"))
            for prefix, generator in (("", _cycle(model).generator), ("untrained_", untrained)):
                y = generator(z)
                sums[f"{prefix}pixel_mse"] += float(F.mse_loss(y, x, reduction="sum"))
                sums[f"{prefix}cycle_loss"] += float(F.mse_loss(_cycle(model).encoder(y), z, reduction="sum"))
            pixels, latents = pixels + x.numel(), latents + z.numel()
        return {k: v / max(latents if "cycle" in k else pixels, 1) for k, v in sums.items()}


# -- the task kind (see partwise.recipe.Kind) ------------------------------------------------
class DigitsCycleKind(Kind):
    """Digits with the :class:`DigitsCycle` model (``model.name: mlp``; args latent, hidden, dropout)
    and :class:`DigitsCycleTask` (``task.args.autoencoder_phases``)."""

    name = "digits_cycle"
    task_args, model_args = DigitsTaskArgs, {"mlp": DigitsModelArgs}
    metrics = DigitsCycleTask.metrics
    best = (None, "min")  # its phases optimise different losses

    def check(self, recipe: Recipe) -> None:
        problems = []
        if recipe.data.name != "digits":
            problems.append(f"data.name: {recipe.data.name!r} does not fit task 'digits_cycle'; use digits")
        if recipe.model.name != "mlp":
            problems.append(f"model.name: {recipe.model.name!r} is not a digits_cycle model; use mlp")
        phases = recipe.task.args.get("autoencoder_phases")  # keys and types: checked by the kind's schemas
        names = [ph.name for ph in recipe.plan]
        if phases is not None:
            problems += [f"task.args.autoencoder_phases: {p!r} is not a phase of the plan; phases are {names}"
                         for p in phases if p not in names]
        if problems:
            raise ConfigError(problems)

    def model_for_check(self, recipe: Recipe) -> nn.Module:
        return self.build_model(recipe, KindData(None, None, None))

    def load_data(self, recipe: Recipe, artifacts: dict[str, Any] | None) -> KindData:
        train, dev, test = digits_splits(recipe.data.limit)
        keep, subset = training_subset(recipe, range(len(train)), "images")
        if subset is not None:
            rows = torch.tensor(keep, dtype=torch.long)
            train = DigitsDataset(train.pixels[rows], train.index[rows])
        data = KindData(train, dev, test, {"subset": subset})
        if artifacts is not None and artifacts.get("rows") != self.artifacts(data)["rows"]:
            raise ConfigError([f"data: the run was trained on splits of {artifacts.get('rows')} rows, this data has "
                               f"{self.artifacts(data)['rows']}; use the run's own data settings"])
        return data

    def artifacts(self, data: KindData) -> dict[str, Any]:
        return {"rows": {split: len(getattr(data, split)) for split in ("train", "dev", "test")}}

    def build_model(self, recipe: Recipe, data: KindData) -> nn.Module:
        torch.manual_seed(recipe.seed)
        try:
            return DigitsCycle(**recipe.model.args, seed=recipe.seed)
        except (TypeError, ValueError) as e:
            raise ConfigError([f"model.args: {e}"]) from None

    def build_task(self, recipe: Recipe, data: KindData, max_len: int | None = None) -> DigitsCycleTask:
        try:
            return DigitsCycleTask(recipe.task.args.get("autoencoder_phases", ("autoencoder",)), seed=recipe.seed)
        except TypeError as e:
            raise ConfigError([f"task.args: {e}"]) from None

    def loaders(self, recipe: Recipe, data: KindData) -> tuple[DataLoader[Any], DataLoader[Any] | None]:
        """Shuffled training batches by ``(seed, epoch)``, dropping each epoch's last partial batch
        (BatchNorm cannot train on a batch of one)."""
        size = recipe.training.batch_size
        if size > len(data.train):
            raise ConfigError([f"training.batch_size: {size} is larger than the {len(data.train)} training rows; "
                               "lower it or raise data.limit"])
        batches = ShuffledBatches(len(data.train), size, seed=recipe.seed, drop_last=True)
        train = DataLoader(data.train, batch_sampler=batches, collate_fn=collate_digits)
        return train, self.eval_loader(recipe, data.dev)

    def eval_loader(self, recipe: Recipe, dataset: Any) -> DataLoader[Any] | None:
        if dataset is None:
            return None
        return DataLoader(dataset, batch_size=256, shuffle=False, collate_fn=collate_digits)

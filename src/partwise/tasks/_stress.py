"""The ``stress`` task kind: lexical stress from a kept G2P encoder (retarget an encoder, swap its head).

For each CMUdict word the labels come from its first pronunciation that carries a primary stress
(``1``): which syllable (vowel) is stressed and how many syllables there are, both clipped to
``max_syllables`` (classes ``0..K-1`` and ``1..K``); words with no primary stress are dropped.
The model is :class:`StressModel`: a GRU encoder shaped like g2p-en's (embedding 256, hidden 256)
and a new :class:`StressHead` (masked attention pooling + the final state -> MLP -> two heads).

Recipe ``task.args``: ``encoder`` = ``g2p_en`` (copy g2p-en's pretrained encoder, default),
``scratch`` (fresh weights, same shape) or ``run:PATH`` (the ``encoder`` part of a partwise G2P
run); ``max_syllables`` (default 8). ``model.name`` is ``gru``; ``model.args``: ``hidden``, ``dropout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from .._errors import CheckpointError, ConfigError, PartError
from .._run._runfolder import BadFileError, RunFolder, read_yaml
from .._run._surgery import load_part
from ..data import BucketBatchSampler, G2PSplit, Vocab, load_cmudict_splits, stress_labels
from ..pretrained import G2P_EN_GRAPHEMES
from ..recipe import GRUArgs, Kind, KindData, Recipe, StressModelArgs, StressTaskArgs, training_subset
from ..seq2seq import PAD, GRUEncoder, Memory
from ..seq2seq._model import check_dropout, check_positive_int

__all__ = ["StressBatch", "StressDataset", "StressHead", "StressKind", "StressLogits", "StressModel",
           "StressTask", "collate_stress", "stress_model", "word_stress_labels"]

ENCODER_EMB, ENCODER_HIDDEN = 256, 256  # g2p-en's encoder shape


def word_stress_labels(pronunciations: list[list[str]], max_syllables: int = 8) -> tuple[int, int] | None:
    """``(stressed syllable index, syllable count)`` of the first pronunciation with a primary stress,
    clipped to ``max_syllables``; ``None`` if no pronunciation has one.

    Examples:
        >>> word_stress_labels([["AH0"], ["EY1"]])
        (0, 1)
    """
    for pron in pronunciations:
        try:
            index, count = stress_labels(pron)
        except ValueError:
            continue
        return min(index, max_syllables - 1), min(count, max_syllables)
    return None


@dataclass(frozen=True)
class StressBatch:
    """Padded graphemes (+EOS) with labels: ``stress`` index ``(B,)``, syllable count ``syllables``
    ``(B,)`` (1..K), and ``index``, the dataset rows (the encoder cache's row ids)."""

    src: Tensor
    src_mask: Tensor
    stress: Tensor
    syllables: Tensor
    index: Tensor


class StressDataset(Dataset[tuple[int, Tensor, int, int]]):
    """Words encoded with ``vocab`` (characters, then EOS) and their stress labels.

    Examples:
        >>> ds = StressDataset(["ab"], [0], [1], Vocab(["a", "b"]))
        >>> ds[0][1].tolist(), len(ds)
        ([4, 5, 3], 1)
    """

    def __init__(self, words: list[str], stress: list[int], syllables: list[int], vocab: Vocab) -> None:
        if not words or not len(words) == len(stress) == len(syllables):
            raise ValueError(f"StressDataset needs one stress index and one syllable count per word and at least one "
                             f"word; got {len(words)} words, {len(stress)} and {len(syllables)} labels")
        self.words, self.vocab = list(words), vocab
        self.stress, self.syllables = torch.tensor(stress), torch.tensor(syllables)
        rows = [vocab.encode(list(w.lower()), add_eos=True) for w in self.words]
        self.lengths = torch.tensor([len(r) for r in rows])
        self._offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        self._flat = torch.tensor([i for r in rows for i in r], dtype=torch.long)

    @classmethod
    def from_split(cls, split: G2PSplit, vocab: Vocab, max_syllables: int = 8) -> StressDataset:
        """Labelled words of a stressed CMUdict split (see :func:`word_stress_labels`)."""
        kept = [(w, lab) for w, refs in zip(split.words, split.references, strict=True)
                if (lab := word_stress_labels(refs, max_syllables)) is not None]
        return cls([w for w, _ in kept], [lab[0] for _, lab in kept], [lab[1] for _, lab in kept], vocab)

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, i: int) -> tuple[int, Tensor, int, int]:
        return i, self._flat[self._offsets[i] : self._offsets[i + 1]], int(self.stress[i]), int(self.syllables[i])


def collate_stress(items: list[tuple[int, Tensor, int, int]]) -> StressBatch:
    """Pad :class:`StressDataset` rows into a :class:`StressBatch`."""
    src = pad_sequence([it[1] for it in items], batch_first=True, padding_value=PAD)
    lengths = torch.tensor([len(it[1]) for it in items])
    return StressBatch(src, torch.arange(src.shape[1]) < lengths[:, None], torch.tensor([it[2] for it in items]),
                       torch.tensor([it[3] for it in items]), torch.tensor([it[0] for it in items]))


class StressLogits(NamedTuple):
    stress: Tensor  # (B, K): which syllable carries the primary stress
    syllables: Tensor  # (B, K): class c = c + 1 syllables


class StressHead(nn.Module):
    """Masked attention pooling over ``Memory.states`` with the last layer of ``Memory.final``,
    then ``Linear -> GELU -> Dropout`` and two output layers, ``stress_out`` and ``count_out``.

    Examples:
        >>> head = StressHead(memory_dim=4, final_dim=4, hidden=8)
        >>> mem = Memory(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.zeros(1, 2, 4))
        >>> tuple(head(mem).stress.shape)
        (2, 8)
    """

    def __init__(self, memory_dim: int, final_dim: int, hidden: int = 256, max_syllables: int = 8,
                 dropout: float = 0.1) -> None:
        super().__init__()
        for name, value in (("memory_dim", memory_dim), ("final_dim", final_dim), ("hidden", hidden),
                            ("max_syllables", max_syllables)):
            check_positive_int(value, name, "StressHead()")
        dropout = check_dropout(dropout, "StressHead()")
        self.key = nn.Linear(memory_dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)
        self.mlp = nn.Sequential(nn.Linear(memory_dim + final_dim, hidden), nn.GELU(), nn.Dropout(dropout))
        self.stress_out = nn.Linear(hidden, max_syllables)
        self.count_out = nn.Linear(hidden, max_syllables)

    def forward(self, memory: Memory) -> StressLogits:
        if memory.final is None:
            raise ValueError("StressHead needs Memory.final (the encoder's last hidden state); got None")
        scores = self.score(torch.tanh(self.key(memory.states))).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~memory.mask, float("-inf")), dim=-1)
        pooled = torch.bmm(weights.unsqueeze(1), memory.states).squeeze(1)
        features = self.mlp(torch.cat([pooled, memory.final[-1]], dim=-1))
        return StressLogits(self.stress_out(features), self.count_out(features))


class StressModel(nn.Module):
    """A kept encoder and a stress classifier: ``decoder(encoder(src, src_mask))``."""

    def __init__(self, encoder: nn.Module, decoder: StressHead) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, src: Tensor, src_mask: Tensor) -> StressLogits:
        return self.decoder(self.encoder(src, src_mask))


def stress_model(vocab_size: int, hidden: int = 256, dropout: float = 0.1, max_syllables: int = 8,
                 encoder_shape: dict[str, Any] | None = None) -> StressModel:
    """A fresh :class:`StressModel` whose encoder has g2p-en's shape (embedding 256, hidden 256, one
    direction, one layer), or ``encoder_shape``: a G2P run's GRU encoder (``emb``, ``hidden``,
    ``layers``, ``bidirectional``), so that run's encoder part loads into it.

    Examples:
        >>> m = stress_model(30, hidden=16)
        >>> logits = m(torch.tensor([[5, 6, 3]]), torch.tensor([[True, True, True]]))
        >>> tuple(logits.syllables.shape)
        (1, 8)
    """
    if encoder_shape is None:
        encoder = GRUEncoder(vocab_size, ENCODER_EMB, ENCODER_HIDDEN)
    else:
        shape = encoder_shape
        encoder = GRUEncoder(vocab_size, shape["emb"], shape["hidden"], shape["layers"], shape["bidirectional"],
                             dec_hidden=shape["hidden"], dec_layers=1)
    final_dim = ENCODER_HIDDEN if encoder_shape is None else encoder_shape["hidden"]
    return StressModel(encoder, StressHead(encoder.output_dim, final_dim, hidden, max_syllables, dropout))



class _StressModel(Protocol):
    encoder: Any
    decoder: Any


def _stress_model(model: nn.Module) -> _StressModel:
    """``model`` seen through the children the stress task needs (``encoder``, ``decoder``)."""
    return cast(_StressModel, model)

class StressTask:
    """Loss ``CE(stress) + CE(syllable count)``; accuracies next to the majority-class baselines.

    Args:
        majority_stress: the most frequent stress index in the training data.
        majority_syllables: the most frequent syllable count in the training data.

    Implements the frozen-encoder cache protocol (:class:`partwise.EncoderCache`).
    """

    metrics = ("loss", "stress_acc", "syllables_acc", "both_acc", "majority_stress_acc", "majority_syllables_acc")

    def __init__(self, majority_stress: int = 0, majority_syllables: int = 2) -> None:
        self.majority_stress, self.majority_syllables = majority_stress, majority_syllables

    def loss(self, model: nn.Module, batch: StressBatch, ctx: Any = None) -> Tensor:
        return self.loss_from_encoding(model, batch, None, ctx)

    def encoder_of(self, model: nn.Module) -> nn.Module:
        return _stress_model(model).encoder

    def encode(self, model: nn.Module, batch: StressBatch) -> Memory:
        return _stress_model(model).encoder(batch.src, batch.src_mask)

    def loss_from_encoding(self, model: nn.Module, batch: StressBatch, memory: Memory | None, ctx: Any = None,
                           reduction: str = "mean") -> Tensor:
        logits = _stress_model(model).decoder(self.encode(model, batch) if memory is None else memory)
        ce = nn.functional.cross_entropy
        return (ce(logits.stress.float(), batch.stress, reduction=reduction)
                + ce(logits.syllables.float(), batch.syllables - 1, reduction=reduction))

    def split_encoding(self, memory: Memory, batch: StressBatch) -> list[dict[str, Tensor]]:
        final = memory.final
        if final is None:  # the stress encoder always hands its final state to the head
            raise ValueError("stress task: the encoder's Memory has no final state to cache")
        return [{"states": memory.states[i, :n], "final": final[:, i]}
                for i, n in enumerate(memory.mask.sum(1).tolist())]

    def merge_encoding(self, rows: list[dict[str, Tensor]], batch: StressBatch) -> Memory:
        states = pad_sequence([r["states"] for r in rows], batch_first=True)
        lengths = torch.tensor([r["states"].shape[0] for r in rows], device=states.device)
        mask = torch.arange(states.shape[1], device=states.device) < lengths[:, None]
        return Memory(states, mask, torch.stack([r["final"] for r in rows], dim=1))

    def row_ids(self, batch: StressBatch) -> Tensor:
        return batch.index

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Any, dataset: Any = None) -> dict[str, float]:
        n, loss, hits = 0, 0.0, torch.zeros(5, dtype=torch.long)
        for batch in batches:
            logits = _stress_model(model).decoder(self.encode(model, batch))
            stress_ok = logits.stress.argmax(-1) == batch.stress
            count_ok = logits.syllables.argmax(-1) + 1 == batch.syllables
            loss += float(self.loss_from_encoding(model, batch, None, reduction="sum"))
            hits += torch.stack([stress_ok.sum(), count_ok.sum(), (stress_ok & count_ok).sum(),
                                 (batch.stress == self.majority_stress).sum(),
                                 (batch.syllables == self.majority_syllables).sum()]).cpu()
            n += batch.src.shape[0]
        acc = (hits.double() / max(n, 1)).tolist()
        return {"loss": loss / max(n, 1), "stress_acc": acc[0], "syllables_acc": acc[1], "both_acc": acc[2],
                "majority_stress_acc": acc[3], "majority_syllables_acc": acc[4]}


# -- the CLI kind --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Options:
    encoder: str  # "g2p_en" | "scratch" | "run"
    run: Path | None
    max_syllables: int
    model_args: dict[str, Any]


def _options(recipe: Recipe, check_run: bool = True) -> _Options:
    """The kind's settings from a recipe; every problem in one :class:`ConfigError`. ``check_run``:
    check that a ``run:PATH`` encoder source exists (a restored run no longer needs it)."""
    args, errors = recipe.task.args, []  # keys and types: checked by the kind's schemas when the recipe is read
    if recipe.data.name != "cmudict":
        errors.append(f"data.name: {recipe.data.name!r} does not fit task 'stress'; use cmudict")
    if recipe.model.name != "gru":
        errors.append(f"model.name: {recipe.model.name!r}: task 'stress' has one model, 'gru' (a GRU encoder "
                      "shaped like g2p-en's with an attention-pooling classifier); set model.name: gru")
    k = int(args.get("max_syllables", 8))
    spec, run = args.get("encoder", "g2p_en"), None
    if isinstance(spec, str) and spec.startswith("run:") and len(spec) > 4:
        run = Path(spec[4:])
        if check_run and not RunFolder(run).holds_run_files():
            errors.append(f"task.args.encoder: {spec!r}: {str(run)!r} is not a partwise run directory "
                          "(no artifacts.json); give run:PATH of a `partwise train` G2P run")
    elif spec not in ("g2p_en", "scratch"):
        errors.append(f"task.args.encoder: {spec!r} is not 'g2p_en', 'scratch' or 'run:PATH' (a partwise G2P run)")
    if errors:
        raise ConfigError(errors)
    return _Options("run" if run else spec, run, k, dict(recipe.model.args))


def _run_vocab(run: Path) -> Vocab:
    try:
        saved = RunFolder(run).read_artifacts()
    except BadFileError as e:
        raise ConfigError([f"task.args.encoder: {e}"]) from None
    if "src" not in saved:
        raise ConfigError([f"task.args.encoder: run {str(run)!r} saved no source vocabulary ('src' in "
                           "artifacts.json); give run:PATH of a seq2seq (G2P) run"])
    return Vocab.from_dict(saved["src"])


def _run_encoder_shape(run: Path) -> dict[str, Any]:
    """The GRU encoder shape of G2P run ``run`` (from its config.yaml; defaults as the recipe schema's)."""
    try:
        model = (read_yaml(RunFolder(run).config, "give run:PATH of a G2P run") or {}).get("model", {})
        args: Any = GRUArgs(**(model.get("args") or {}))
    except (BadFileError, AttributeError, TypeError, ValueError) as e:
        raise ConfigError([f"task.args.encoder: run {str(run)!r}: its config.yaml does not describe a GRU "
                           f"G2P model ({' '.join(str(e).split())[:200]}); give run:PATH of a G2P run with model gru"]
                          ) from None
    if model.get("name", "gru") != "gru":
        raise ConfigError([f"task.args.encoder: run {str(run)!r} trained model {model.get('name')!r}; the stress "
                           "task keeps GRU encoders: give run:PATH of a G2P run with model gru"])
    layers = args.enc_layers or args.layers
    return {"emb": args.emb, "hidden": args.hidden, "layers": layers, "bidirectional": args.bidirectional}


def _majority(values: Tensor) -> int:
    return int(torch.bincount(values).argmax())


class StressKind(Kind):
    """``task.name: stress`` for the ``partwise`` CLI (see the module docstring for the options)."""

    name = "stress"
    task_args, model_args = StressTaskArgs, {"gru": StressModelArgs}
    metrics = StressTask.metrics
    best = ("both_acc", "max")

    def check(self, recipe: Recipe) -> None:
        _options(recipe)

    def model_for_check(self, recipe: Recipe) -> nn.Module:
        """The model, with a run encoder loaded (to check that it fits) but g2p-en's weights not read."""
        opts = _options(recipe)
        vocab = _run_vocab(opts.run) if opts.run else Vocab(G2P_EN_GRAPHEMES[3:])
        return self._model(opts, len(vocab), load=opts.encoder == "run")

    def load_data(self, recipe: Recipe, artifacts: dict[str, Any] | None) -> KindData:
        opts = _options(recipe, check_run=artifacts is None)
        if artifacts is not None:
            vocab = Vocab.from_dict(artifacts["graphemes"])
        else:
            vocab = _run_vocab(opts.run) if opts.run else Vocab(G2P_EN_GRAPHEMES[3:])
        splits = load_cmudict_splits(stress=True)
        limit = recipe.data.limit
        splits = {name: G2PSplit(name, s.words[:limit], s.references[:limit]) for name, s in splits.items()}
        keep, subset = training_subset(recipe, range(len(splits["train"].words)), "words")
        train = splits["train"]
        splits["train"] = G2PSplit("train", [train.words[i] for i in keep], [train.references[i] for i in keep])
        sets = {name: StressDataset.from_split(s, vocab, opts.max_syllables) for name, s in splits.items()}
        majority = (artifacts or {}).get("majority") or {
            "stress": _majority(sets["train"].stress), "syllables": _majority(sets["train"].syllables)}
        return KindData(sets["train"], sets["dev"], sets["test"],
                        {"vocab": vocab, "majority": majority, "init_encoder": artifacts is None, "subset": subset})

    def artifacts(self, data: KindData) -> dict[str, Any]:
        return {"graphemes": data.extra["vocab"].to_dict(), "majority": data.extra["majority"]}

    def build_model(self, recipe: Recipe, data: KindData) -> StressModel:
        """The model; a new run's encoder gets its weights from ``task.args.encoder`` (a restored run's
        come from its checkpoint, so g2p-en or the source run are not needed then)."""
        load = data.extra.get("init_encoder", True)
        return self._model(_options(recipe, check_run=load), len(data.extra["vocab"]), load=load, seed=recipe.seed)

    def _model(self, opts: _Options, vocab_size: int, load: bool, seed: int = 0) -> StressModel:
        torch.manual_seed(seed)
        shape = _run_encoder_shape(opts.run) if opts.encoder == "run" and opts.run is not None else None
        try:
            model = stress_model(vocab_size, max_syllables=opts.max_syllables, encoder_shape=shape, **opts.model_args)
        except (TypeError, ValueError) as e:
            raise ConfigError([f"model.args: {e}"]) from None
        if load and opts.encoder == "g2p_en":
            from ..pretrained import load_g2p_en

            try:
                model.encoder.load_state_dict(load_g2p_en().model.encoder.state_dict())
            except (ModuleNotFoundError, FileNotFoundError) as e:
                raise ConfigError([f"task.args.encoder: 'g2p_en': {e}; or use encoder: scratch"]) from None
        elif load and opts.encoder == "run":
            try:  # the run's best checkpoint (the one its eval scores), else its latest
                load_part(model, "encoder", cast(Path, opts.run), which="best")
            except (PartError, CheckpointError, FileNotFoundError) as e:
                raise ConfigError([f"task.args.encoder: the encoder of run {str(opts.run)!r} does not fit the "
                                   f"GRU encoder its config.yaml describes ({shape}): {e}"]) from None
        return model

    def build_task(self, recipe: Recipe, data: KindData, max_len: int | None = None) -> StressTask:
        return StressTask(data.extra["majority"]["stress"], data.extra["majority"]["syllables"])

    def loaders(self, recipe: Recipe, data: KindData) -> tuple[DataLoader[Any], DataLoader[Any] | None]:
        train = DataLoader(data.train, collate_fn=collate_stress, batch_sampler=BucketBatchSampler(
            data.train.lengths, recipe.training.batch_size, seed=recipe.seed))
        return train, self.eval_loader(recipe, data.dev)

    def eval_loader(self, recipe: Recipe, dataset: StressDataset | None) -> DataLoader[Any] | None:
        if dataset is None:
            return None
        return DataLoader(dataset, collate_fn=collate_stress,
                          batch_sampler=BucketBatchSampler(dataset.lengths, 256, shuffle=False))

    def predict(self, recipe: Recipe, model: nn.Module, data: KindData, words: list[str],
                beam_size: int | None) -> list[str]:
        """``"3 syllables, stress on 2"`` per word (syllables counted from 1)."""
        ds = StressDataset(words, [0] * len(words), [1] * len(words), data.extra["vocab"])
        batch = collate_stress([ds[i] for i in range(len(ds))])
        with torch.inference_mode():
            logits = model(batch.src, batch.src_mask)
        return [f"{c + 1} syllable{'s' if c else ''}, stress on {s + 1}"
                for s, c in zip(logits.stress.argmax(-1).tolist(), logits.syllables.argmax(-1).tolist(), strict=True)]

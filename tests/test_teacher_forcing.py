"""Tests for partwise's teacher forcing / scheduled sampling and its decay schedules."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from partwise.seq2seq import (
    BOS,
    PAD,
    Memory,
    TeacherForcing,
    gru_seq2seq,
    tf_constant,
    tf_exponential,
    tf_inverse_sigmoid,
    tf_linear,
    tf_schedule_from_dict,
    transformer_seq2seq,
)

V, H = 12, 16


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.rnn = nn.GRU(H, H, batch_first=True)

    def forward(self, src: Tensor, src_mask: Tensor) -> Memory:
        states, final = self.rnn(self.emb(src))
        return Memory(states=states, mask=src_mask, final=final)


class TinyDecoder(nn.Module):
    """Embedding + GRU + Linear with a masked-mean context; follows the seq2seq decoder protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.init = nn.Linear(H, H)
        self.rnn = nn.GRU(2 * H, H, batch_first=True)
        self.out = nn.Linear(H, V)

    def _context(self, memory: Memory) -> Tensor:
        m = memory.mask.unsqueeze(-1).float()
        return (memory.states * m).sum(1) / m.sum(1)

    def initial_state(self, memory: Memory) -> Tensor:
        return torch.tanh(self.init(memory.final))

    def forward(self, prev_tokens: Tensor, memory: Memory, state: Any = None) -> Tensor:
        state = self.initial_state(memory) if state is None else state
        ctx = self._context(memory).unsqueeze(1).expand(-1, prev_tokens.shape[1], -1)
        outputs, _ = self.rnn(torch.cat([self.emb(prev_tokens), ctx], -1), state)
        return self.out(outputs)

    def step(self, prev_token: Tensor, memory: Memory, state: Any) -> tuple[Tensor, Tensor]:
        x = torch.cat([self.emb(prev_token), self._context(memory)], -1).unsqueeze(1)
        output, state = self.rnn(x, state)
        return self.out(output[:, 0]), state

    def reorder_state(self, state: Tensor, index: Tensor) -> Tensor:
        return state.index_select(1, index)


class Recorder:
    """Wraps a decoder and records the inputs of every parallel and stepwise call."""

    def __init__(self, decoder: Any) -> None:
        self.decoder, self.parallel_inputs, self.step_inputs = decoder, [], []
        self.grad_enabled: list[bool] = []

    def __call__(self, prev_tokens: Tensor, memory: Memory, state: Any = None) -> Tensor:
        self.parallel_inputs.append(prev_tokens.clone())
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.decoder(prev_tokens, memory, state)

    def initial_state(self, memory: Memory) -> Any:
        return self.decoder.initial_state(memory)

    def step(self, prev_token: Tensor, memory: Memory, state: Any) -> tuple[Tensor, Any]:
        self.step_inputs.append(prev_token.clone())
        return self.decoder.step(prev_token, memory, state)

    def fed(self) -> Tensor:
        """The (B, T) inputs of the stepwise run, or of the last parallel call."""
        return torch.stack(self.step_inputs, 1) if self.step_inputs else self.parallel_inputs[-1]


def make_batch(batch: int = 4, src_len: int = 5, tgt_len: int = 7, seed: int = 0, low: int = 4):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (batch, src_len), generator=g)
    tgt = torch.randint(low, V, (batch, tgt_len), generator=g)
    tgt[:, 0] = BOS
    return src, torch.ones(batch, src_len, dtype=torch.bool), tgt


@pytest.fixture
def model() -> tuple[TinyEncoder, TinyDecoder]:
    torch.manual_seed(0)
    return TinyEncoder().eval(), TinyDecoder().eval()


def biased(decoder: TinyDecoder) -> TinyDecoder:
    """Make the decoder always predict token 4, so a fed input equals gold iff gold was chosen."""
    with torch.no_grad():
        decoder.out.bias[4] = 100.0
    return decoder


def greedy_free_run(decoder: Any, memory: Memory, tgt_in: Tensor) -> Tensor:
    state, token, outputs = decoder.initial_state(memory), tgt_in[:, 0], []
    for _ in range(tgt_in.shape[1]):
        logits, state = decoder.step(token, memory, state)
        outputs.append(logits)
        token = logits.argmax(-1)
    return torch.stack(outputs, 1)


# ---------------------------------------------------------------- schedules

STEPS = [0, 1, 7, 100, 2500, 10**6]


@pytest.mark.parametrize("step", STEPS)
def test_schedule_formulas(step: int) -> None:
    assert tf_constant(0.3)(step) == 0.3
    assert tf_linear(c=1e-3, k=0.9, eps=0.1)(step) == pytest.approx(max(0.1, 0.9 - 1e-3 * step))
    assert tf_exponential(0.99)(step) == pytest.approx(0.99**step)
    k = 500.0
    expected = k / (k + math.exp(step / k)) if step / k < 700 else 0.0
    assert tf_inverse_sigmoid(k)(step) == pytest.approx(expected, abs=1e-300)


@pytest.mark.parametrize("schedule", [tf_linear(c=1e-3), tf_exponential(0.995), tf_inverse_sigmoid(50.0)])
def test_decaying_schedules_are_monotone_and_in_range(schedule: Any) -> None:
    values = [schedule(i) for i in range(0, 5000, 7)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] < values[0]


def test_inverse_sigmoid_far_step_does_not_overflow() -> None:
    assert tf_inverse_sigmoid(1.0)(10**9) == 0.0


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: tf_constant(1.5), "p"),
        (lambda: tf_constant(-0.1), "p"),
        (lambda: tf_linear(c=-1.0), "c"),
        (lambda: tf_linear(c=0.1, k=1.2), "k"),
        (lambda: tf_linear(c=0.1, k=0.5, eps=0.6), "eps"),
        (lambda: tf_exponential(1.0), "k"),
        (lambda: tf_exponential(0.0), "k"),
        (lambda: tf_inverse_sigmoid(0.5), "k"),
        (lambda: tf_constant(float("nan")), "p"),
        (lambda: tf_linear(c=math.inf), "c"),
        (lambda: tf_inverse_sigmoid(math.inf), "k"),
    ],
)
def test_schedule_arguments_are_validated(build: Any, name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name}=.*(range|finite)"):
        build()


def test_schedule_type_and_step_errors() -> None:
    with pytest.raises(TypeError, match="p='0.5'"):
        tf_constant("0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step=-1"):
        tf_linear(c=0.1)(-1)
    with pytest.raises(TypeError, match="step=1.5"):
        tf_exponential(0.9)(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "schedule",
    [tf_constant(0.25), tf_linear(c=2e-4, k=0.8, eps=0.05), tf_exponential(0.999), tf_inverse_sigmoid(2000.0)],
)
def test_schedule_dict_round_trip(schedule: Any) -> None:
    rebuilt = tf_schedule_from_dict(schedule.to_dict())
    assert rebuilt == schedule
    assert [rebuilt(i) for i in STEPS] == [schedule(i) for i in STEPS]


def test_schedule_from_config_and_describe() -> None:
    s = tf_schedule_from_dict({"name": "inverse_sigmoid", "k": 2000})
    assert s(0) == pytest.approx(2000 / 2001)
    assert "exp(i/2000.0)" in s.describe()
    assert "max(0.1, 0.9 - 0.001*i)" in tf_linear(c=0.001, k=0.9, eps=0.1).describe()


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"name": "cosine", "k": 1}, "not one of"),
        ({"name": "linear"}, r"missing \['c'\]"),
        ({"name": "exponential", "k": 0.9, "rate": 1}, r"unknown \['rate'\]"),
    ],
)
def test_schedule_from_dict_rejects_bad_configs(config: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tf_schedule_from_dict(config)


# ---------------------------------------------------------------- teacher forcing

VALID = [("token", "exact"), ("token", "two_pass"), ("sequence", "exact")]


@pytest.mark.parametrize(("per", "mode"), VALID)
def test_ratio_one_is_one_parallel_call_equal_to_decoder(model: Any, per: str, mode: str) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch()
    memory = encoder(src, mask)
    rec = Recorder(decoder)
    tf = TeacherForcing(tf_constant(1.0), per=per, mode=mode)
    logits = tf(rec, memory, tgt, step=3)
    assert len(rec.parallel_inputs) == 1 and not rec.step_inputs
    assert torch.equal(logits, decoder(tgt, memory, decoder.initial_state(memory)))
    assert tf.last_stats is not None
    assert (tf.last_stats.parallel, tf.last_stats.gold_fraction, tf.last_stats.ratio) == (True, 1.0, 1.0)


@pytest.mark.parametrize("per", ["token", "sequence"])
def test_ratio_zero_exact_equals_greedy_free_run(model: Any, per: str) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch()
    memory = encoder(src, mask)
    tf = TeacherForcing(0.0, per=per, mode="exact")
    torch.testing.assert_close(tf(decoder, memory, tgt, step=0), greedy_free_run(decoder, memory, tgt))
    assert tf.last_stats is not None and not tf.last_stats.parallel


@pytest.mark.parametrize("mode", ["exact", "two_pass"])
@pytest.mark.parametrize("p", [0.2, 0.7])
def test_per_token_gold_fraction_matches_p(model: Any, mode: str, p: float) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch(batch=64, tgt_len=41, seed=1, low=5)
    rec = Recorder(biased(decoder))
    tf = TeacherForcing(p, per="token", mode=mode)
    tf(rec, encoder(src, mask), tgt, step=0, generator=torch.Generator().manual_seed(5))
    fed = rec.fed()
    assert torch.equal(fed[:, 0], tgt[:, 0])
    assert bool(((fed[:, 1:] == tgt[:, 1:]) | (fed[:, 1:] == 4)).all())
    fraction = (fed[:, 1:] == tgt[:, 1:]).float().mean().item()
    assert fraction == pytest.approx(tf.last_stats.gold_fraction)
    assert abs(fraction - p) < 4 * math.sqrt(p * (1 - p) / (64 * 40))  # 4 standard deviations
    # Rows draw independently: not every example gets the same pattern.
    assert not bool(((fed[:, 1:] == tgt[:, 1:]) == (fed[:1, 1:] == tgt[:1, 1:])).all())


def test_per_sequence_draws_once_per_batch(model: Any) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch(seed=2, low=5)
    memory = encoder(src, mask)
    tf = TeacherForcing(0.5, per="sequence")
    gen, forced = torch.Generator().manual_seed(0), 0
    for _ in range(200):
        rec = Recorder(biased(decoder))
        tf(rec, memory, tgt, step=0, generator=gen)
        fed = rec.fed()[:, 1:]
        assert bool((fed == tgt[:, 1:]).all()) or bool((fed == 4).all())
        assert tf.last_stats.parallel == bool((fed == tgt[:, 1:]).all()) == bool(rec.parallel_inputs)
        forced += tf.last_stats.parallel
    assert abs(forced / 200 - 0.5) < 4 * math.sqrt(0.25 / 200)


@pytest.mark.parametrize("mode", ["exact", "two_pass"])
def test_bos_and_padding_keep_gold(model: Any, mode: str) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch(batch=6, tgt_len=9, low=5)
    tgt[0, 4:] = PAD
    tgt[3, 2:] = PAD
    rec = Recorder(biased(decoder))
    tf = TeacherForcing(0.0, per="token", mode=mode)
    tf(rec, encoder(src, mask), tgt, step=0)
    fed = rec.fed()
    assert bool((fed[:, 0] == BOS).all())
    assert torch.equal(fed[tgt == PAD], tgt[tgt == PAD])
    assert bool((fed[:, 1:][tgt[:, 1:] != PAD] == 4).all())
    assert tf.last_stats.gold_fraction == 0.0


def test_two_pass_zero_feeds_first_pass_argmax_shifted(model: Any) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch()
    tgt[1, 5:] = PAD
    memory = encoder(src, mask)
    first = decoder(tgt, memory, decoder.initial_state(memory))
    expected_in = torch.cat([tgt[:, :1], first[:, :-1].argmax(-1)], 1)
    expected_in[tgt == PAD] = PAD
    tf = TeacherForcing(0.0, per="token", mode="two_pass")
    logits = tf(decoder, memory, tgt, step=0)
    torch.testing.assert_close(logits, decoder(expected_in, memory, decoder.initial_state(memory)))
    assert tf.last_stats.parallel


def test_two_pass_never_steps(model: Any) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch()
    rec = Recorder(decoder)
    TeacherForcing(0.5, mode="two_pass")(rec, encoder(src, mask), tgt, step=0)
    assert len(rec.parallel_inputs) == 2 and not rec.step_inputs
    assert torch.equal(rec.parallel_inputs[0], tgt)
    assert rec.grad_enabled == [False, True]  # the first, teacher-forced pass builds no graph


@pytest.mark.parametrize(("per", "mode"), VALID)
def test_all_gold_draw_takes_parallel_path(model: Any, per: str, mode: str) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch()
    memory = encoder(src, mask)
    rec = Recorder(decoder)
    tf = TeacherForcing(0.5, per=per, mode=mode)
    logits = tf(rec, memory, tgt[:, :1], step=0)  # only BOS: nothing to draw, every input is gold
    assert len(rec.parallel_inputs) == 1 and not rec.step_inputs
    assert torch.equal(logits, decoder(tgt[:, :1], memory, decoder.initial_state(memory)))
    assert tf.last_stats.parallel and tf.last_stats.gold_fraction == 1.0


@pytest.mark.parametrize(("per", "mode"), VALID)
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_gradients_reach_decoder_and_encoder(model: Any, per: str, mode: str, p: float) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch()
    logits = TeacherForcing(p, per=per, mode=mode)(decoder, encoder(src, mask), tgt, step=0)
    nn.functional.cross_entropy(logits.reshape(-1, V), tgt.roll(-1, 1).reshape(-1)).backward()
    for name, param in [*encoder.named_parameters(), *decoder.named_parameters()]:
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


@pytest.mark.parametrize(("per", "mode"), VALID)
@pytest.mark.parametrize("sample", [False, True])
def test_generator_makes_calls_reproducible(model: Any, per: str, mode: str, sample: bool) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch(batch=16, tgt_len=12)
    memory = encoder(src, mask)
    tf = TeacherForcing(0.5, per=per, mode=mode, sample=sample)
    runs = []
    for seed in (7, 7, 8):
        rec = Recorder(decoder)
        tf(rec, memory, tgt, step=0, generator=torch.Generator().manual_seed(seed))
        runs.append(rec.fed())
    assert torch.equal(runs[0], runs[1])
    if per == "token":
        assert not torch.equal(runs[0], runs[2])


def test_global_rng_is_used_and_python_random_untouched(model: Any) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch(batch=16, tgt_len=12)
    memory = encoder(src, mask)
    tf = TeacherForcing(0.5, sample=True)
    py_state, outputs = random.getstate(), []
    for _ in range(2):
        torch.manual_seed(123)
        outputs.append(tf(decoder, memory, tgt, step=0))
    assert torch.equal(outputs[0], outputs[1])
    assert random.getstate() == py_state


def test_sample_feeds_tokens_other_than_argmax(model: Any) -> None:
    encoder, decoder = model
    with torch.no_grad():
        decoder.out.weight.mul_(0.01)  # near-uniform softmax
    src, mask, tgt = make_batch(batch=32, tgt_len=10)
    rec = Recorder(decoder)
    logits = TeacherForcing(0.0, sample=True)(rec, encoder(src, mask), tgt, step=0)
    fed = rec.fed()
    assert bool(((fed >= 0) & (fed < V)).all())
    assert bool((fed[:, 1:] != logits[:, :-1].argmax(-1)).any())


def test_ratio_follows_schedule_and_stats_record_it(model: Any) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch()
    tf = TeacherForcing(tf_linear(c=0.01))
    assert [tf.ratio(i) for i in (0, 50, 200)] == pytest.approx([1.0, 0.5, 0.0])
    tf(decoder, encoder(src, mask), tgt, step=50)
    assert (tf.last_stats.step, tf.last_stats.ratio) == (50, pytest.approx(0.5))


def test_invalid_combinations_and_arguments_raise() -> None:
    with pytest.raises(ValueError, match="per='token' with mode='two_pass'"):
        TeacherForcing(0.5, per="sequence", mode="two_pass")
    with pytest.raises(ValueError, match="per='example'"):
        TeacherForcing(0.5, per="example")
    with pytest.raises(ValueError, match="mode='parallel'"):
        TeacherForcing(0.5, mode="parallel")
    with pytest.raises(TypeError, match="sample=1"):
        TeacherForcing(0.5, sample=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="schedule="):
        TeacherForcing("linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"p=1\.5"):
        TeacherForcing(1.5)
    with pytest.raises(ValueError, match="returned 2"):
        TeacherForcing(lambda_schedule(2.0)).ratio(0)


def lambda_schedule(value: float) -> Any:
    class Fixed:
        def __call__(self, step: int) -> float:
            return value

        def describe(self) -> str:
            return str(value)

        def to_dict(self) -> dict[str, Any]:
            return {}

    return Fixed()


def test_bad_call_inputs_raise(model: Any) -> None:
    encoder, decoder = model
    src, mask, tgt = make_batch()
    memory = encoder(src, mask)
    tf = TeacherForcing(0.5)
    with pytest.raises(ValueError, match="batch size 3 but memory has 4"):
        tf(decoder, memory, tgt[:3], step=0)
    with pytest.raises(ValueError, match="long tensor"):
        tf(decoder, memory, tgt.float(), step=0)
    with pytest.raises(ValueError, match="step=-2"):
        tf(decoder, memory, tgt, step=-2)
    with pytest.raises(TypeError, match="no step"):
        tf(nn.Linear(2, 2), memory, tgt, step=0)


def test_teacher_forcing_dict_round_trip() -> None:
    tf = TeacherForcing(tf_inverse_sigmoid(300.0), per="token", mode="two_pass", sample=True)
    again = TeacherForcing.from_dict(tf.to_dict())
    assert again.to_dict() == tf.to_dict()
    assert [again.ratio(i) for i in STEPS] == [tf.ratio(i) for i in STEPS]
    with pytest.raises(ValueError, match=r"unknown keys \['ratio'\]"):
        TeacherForcing.from_dict({"ratio": 0.5})


# ---------------------------------------------------------------- reference models


def reference_model(kind: str, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    if kind == "gru":
        return gru_seq2seq(V, V, emb=8, hidden=16, attention="additive", dropout=dropout)
    return transformer_seq2seq(V, V, d_model=16, heads=2, enc_layers=1, dec_layers=1, ff=32,
                               dropout=dropout, max_len=16)


@pytest.mark.parametrize("kind", ["gru", "transformer"])
def test_reference_models_teacher_forced_and_free_running(kind: str) -> None:
    model = reference_model(kind).eval()
    src, mask, tgt = make_batch()
    memory = model.encode(src, mask)
    forced = TeacherForcing(1.0)(model.decoder, memory, tgt, step=0)
    assert torch.equal(forced, model.decoder(tgt, memory, model.decoder.initial_state(memory)))
    free = TeacherForcing(0.0, mode="exact")(model.decoder, memory, tgt, step=0)
    torch.testing.assert_close(free, greedy_free_run(model.decoder, memory, tgt))


@pytest.mark.parametrize("kind", ["gru", "transformer"])
@pytest.mark.parametrize(("per", "mode"), VALID)
def test_reference_models_train_with_every_mode(kind: str, per: str, mode: str) -> None:
    model = reference_model(kind, dropout=0.1).train()  # dropout on: two-pass's first pass is stochastic
    src, mask, tgt = make_batch(batch=8)
    tgt[2, 4:] = PAD
    logits = TeacherForcing(0.5, per=per, mode=mode)(model.decoder, model.encode(src, mask), tgt, step=0)
    assert logits.shape == (*tgt.shape, V)
    target = torch.cat([tgt[:, 1:], torch.full_like(tgt[:, :1], PAD)], 1)
    nn.functional.cross_entropy(logits.reshape(-1, V), target.reshape(-1), ignore_index=PAD).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing

"""Tiny random-initialised Hugging Face encoder–decoders of every family partwise.hf supports."""

from __future__ import annotations

import torch
import transformers as tf

V = 40  # vocabulary size
PAD, EOS, START = 0, 2, 1  # ids every tiny model here uses (decoder start = 1)

_BART_LIKE = dict(vocab_size=V, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                  pad_token_id=PAD, eos_token_id=EOS, bos_token_id=START, decoder_start_token_id=START,
                  forced_eos_token_id=None)


def t5(**kw) -> tf.PreTrainedModel:
    return tf.T5ForConditionalGeneration(tf.T5Config(
        vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=PAD,
        eos_token_id=EOS, decoder_start_token_id=START, **kw))


def umt5() -> tf.PreTrainedModel:
    return tf.UMT5ForConditionalGeneration(tf.UMT5Config(
        vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=PAD,
        eos_token_id=EOS, decoder_start_token_id=START))


def bart() -> tf.PreTrainedModel:
    return tf.BartForConditionalGeneration(tf.BartConfig(**_BART_LIKE))


def mbart() -> tf.PreTrainedModel:
    return tf.MBartForConditionalGeneration(tf.MBartConfig(**_BART_LIKE))


def marian() -> tf.PreTrainedModel:
    return tf.MarianMTModel(tf.MarianConfig(**_BART_LIKE))


def pegasus() -> tf.PreTrainedModel:
    return tf.PegasusForConditionalGeneration(tf.PegasusConfig(**_BART_LIKE))


def m2m100() -> tf.PreTrainedModel:
    return tf.M2M100ForConditionalGeneration(tf.M2M100Config(**_BART_LIKE))


def whisper() -> tf.PreTrainedModel:
    return tf.WhisperForConditionalGeneration(tf.WhisperConfig(
        vocab_size=V, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8,
        max_source_positions=12, max_target_positions=32, pad_token_id=PAD, eos_token_id=EOS,
        bos_token_id=START, decoder_start_token_id=START, begin_suppress_tokens=None, suppress_tokens=None))


def _bert(**kw) -> tf.BertConfig:
    return tf.BertConfig(vocab_size=V, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=64, pad_token_id=PAD, **kw)


def bert2bert() -> tf.PreTrainedModel:
    config = tf.EncoderDecoderConfig.from_encoder_decoder_configs(
        _bert(hidden_size=16), _bert(hidden_size=24, is_decoder=True, add_cross_attention=True))
    config.pad_token_id, config.decoder_start_token_id, config.eos_token_id = PAD, START, EOS
    return tf.EncoderDecoderModel(config=config)


def vit2bert() -> tf.PreTrainedModel:
    vit = tf.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32)
    config = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit, _bert(hidden_size=16, is_decoder=True, add_cross_attention=True))
    config.pad_token_id, config.decoder_start_token_id, config.eos_token_id = PAD, START, EOS
    return tf.VisionEncoderDecoderModel(config=config)


#: name -> builder, for the text-to-text families (input_ids in, labels out)
TEXT = {"t5": t5, "umt5": umt5, "bart": bart, "mbart": mbart, "marian": marian, "pegasus": pegasus,
        "m2m100": m2m100, "bert2bert": bert2bert}
ALL = {**TEXT, "whisper": whisper, "vit2bert": vit2bert}


def encoder_inputs(name: str, batch: int = 3, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random encoder inputs for model family ``name`` (padded text where the family takes text)."""
    g = torch.Generator().manual_seed(seed)
    if name == "whisper":
        return {"input_features": torch.randn(batch, 8, 24, generator=g)}  # 2 * max_source_positions frames
    if name == "vit2bert":
        return {"pixel_values": torch.randn(batch, 1, 8, 8, generator=g)}
    ids = torch.randint(3, V, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(1, batch):
        n = length - i % min(length - 1, 3)
        ids[i, n:] = PAD
        mask[i, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def labels(batch: int = 3, length: int = 5, seed: int = 1) -> torch.Tensor:
    """Random targets ending in EOS, padded with -100."""
    g = torch.Generator().manual_seed(seed)
    out = torch.randint(3, V, (batch, length), generator=g)
    for i in range(batch):
        n = length - i % min(length, 3)
        out[i, n - 1] = EOS
        out[i, n:] = -100
    return out


def build(name: str, seed: int = 0) -> tf.PreTrainedModel:
    torch.manual_seed(seed)
    return ALL[name]()


def reverse_rows(name: str, n: int) -> list[dict]:
    """``n`` training rows of a reversal task for family ``name`` (Whisper: random audio features)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        src = torch.randint(3, V, (3 + i % 4,), generator=g).tolist()
        row: dict = {"labels": list(reversed(src)) + [EOS]}
        if name == "whisper":
            row["input_features"] = torch.randn(8, 24, generator=g)
        else:
            row["input_ids"] = src + [EOS]
        out.append(row)
    return out

import random

import torch

import partwise as pw
from partwise.data import Seq2SeqDataset, Vocab, collate
from partwise.peft import add_lora
from partwise.seq2seq import Seq2SeqTask, max_len_from, transformer_seq2seq

random.seed(0)
torch.manual_seed(0)
words = ["".join(random.choice("abcdef") for _ in range(random.randint(2, 6))) for _ in range(400)]
pairs = [(list(w), list(reversed(w))) for w in words]            # spell a word backwards
vocab = Vocab.build([source for source, _ in pairs])
train, dev = Seq2SeqDataset(pairs[:320], vocab, vocab), Seq2SeqDataset(pairs[320:], vocab, vocab)
model = transformer_seq2seq(src_vocab=len(vocab), tgt_vocab=len(vocab), d_model=32, heads=2, enc_layers=1,
                            dec_layers=1, ff=64, dropout=0.0)

lora = add_lora(model, "decoder", r=4, alpha=8)                  # LoRA on every nn.Linear of the decoder
parts = pw.Parts(model, lora.spec)                               # encoder, decoder (base weights), decoder.lora
print(parts.table())
plan = pw.Plan([
    pw.Phase("adapters", epochs=4, train={"decoder.lora": 1e-2}),                        # encoder frozen: cached
    pw.Phase("decoder at 1/10", epochs=3, train={"decoder.lora": 1e-2, "decoder": 1e-3}),
    pw.Phase("encoder at 1/100", epochs=3, train={"decoder.lora": 1e-2, "decoder": 1e-3, "encoder": 1e-4}),
])


class StateBytes:                                                # optimizer state held per part, at each phase
    def on_phase_start(self, trainer, span):
        print(span.phase.name, pw.state_bytes(trainer.optimizer, trainer.parts))


task = Seq2SeqTask(tgt_vocab=vocab, max_len=max_len_from(train))
trainer = pw.Trainer(model, parts, plan, task, batch_size=32, collate_fn=collate, guard=True,
                     callbacks=[StateBytes()])
history = trainer.fit(train, dev)                                # the guard checks every frozen part per phase
print(f"dev sequence error: {history[3]['dev_seq_error']:.0%} after the adapters alone, "
      f"{history[-1]['dev_seq_error']:.0%} at the end")

report = lora.merge(model)                                       # W + BA folded in: a plain model again
print(report)

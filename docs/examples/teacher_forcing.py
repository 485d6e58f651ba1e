import random

import torch

import partwise as pw
from partwise.data import Seq2SeqDataset, Vocab, collate
from partwise.seq2seq import Seq2SeqTask, TeacherForcing, gru_seq2seq, max_len_from, tf_constant, tf_inverse_sigmoid

random.seed(0)
torch.manual_seed(0)
words = ["".join(random.choice("abcdef") for _ in range(random.randint(2, 6))) for _ in range(400)]
pairs = [(list(w), list(reversed(w))) for w in words]            # learn to spell a word backwards
vocab = Vocab.build([source for source, _ in pairs])
train, dev = Seq2SeqDataset(pairs[:320], vocab, vocab), Seq2SeqDataset(pairs[320:], vocab, vocab)

model = gru_seq2seq(src_vocab=len(vocab), tgt_vocab=len(vocab), emb=32, hidden=64)
decaying = TeacherForcing(tf_inverse_sigmoid(k=10), per="token")   # gold with probability k / (k + exp(i / k))
task = Seq2SeqTask(teacher_forcing=decaying, tgt_vocab=vocab, max_len=max_len_from(train))
plan = pw.Plan([
    pw.Phase("teacher-forced", epochs=2, train={"encoder": 3e-3, "decoder": 3e-3},
             task_options={"teacher_forcing": TeacherForcing(tf_constant(1.0))}),   # this phase: always gold
    pw.Phase("scheduled sampling", epochs=4, train={"encoder": 3e-3, "decoder": 3e-3}),  # the task's schedule
])
trainer = pw.Trainer(model, pw.Parts(model), plan, task, batch_size=32, collate_fn=collate)
history = trainer.fit(train, dev)
print(f"dev sequence error {history[0]['dev_seq_error']:.0%} after epoch 1, "
      f"{history[-1]['dev_seq_error']:.0%} after epoch {len(history)}")

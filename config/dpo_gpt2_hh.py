# DPO for GPT-2 124M on Anthropic HH-RLHF (helpful-base + harmless-base), one GPU, from the HH
# SFT policy:
#   python data/hh/prepare.py && python train_sft.py config/sft_gpt2_hh.py
#   python train_dpo.py config/dpo_gpt2_hh.py
#   torchrun --standalone --nproc_per_node=8 train_dpo.py config/dpo_gpt2_hh.py --grad_accum=1
# Expected cost, ESTIMATES (not measured): about 12-16 GB of GPU memory at batch_size=8 pairs
# (16 sequences) x 512 tokens in bf16: weights + grads + AdamW state ~2 GB, activations ~4 GB,
# and the (16, 512, 50257) logits with their fp32 log-softmax and its gradient ~6 GB at peak.
# ~86k training pairs, so one epoch is ~1,350 steps of 64 pairs: roughly 0.3-0.6 s per step on
# one A100/H100, 10-15 minutes in all, plus 2-3 minutes for the one no-grad pass that
# precomputes the reference log-probs. If memory is short, halve batch_size and double
# grad_accum: the step is the same.
# What to expect: held-out implicit-reward accuracy around 60-65% (HH labels are noisy), and a
# chosen log-prob that falls while the margin rises; try --rpo_alpha=1.0 if it falls far.
out_dir = "out/dpo_gpt2_hh"
init_from = "out/sft_gpt2_hh/ckpt_best.pt"
train_data = "data/hh/out/prefs_train.jsonl"
val_data = "data/hh/out/prefs_test.jsonl"     # HH has no separate validation split
block_size = 512                              # longer prompts keep their end (the loader)
length_buckets = True                         # HH lengths vary a lot: bucketing saves padding
share_prompt = True                           # each prompt computed once for both answers

# the DPO paper's settings: beta 0.1, a small learning rate, 64 pairs per step, plain DPO
loss_type = "sigmoid"
beta = 0.1
label_smoothing = 0.0
rpo_alpha = 0.0
precompute_ref_logps = True   # one no-grad pass, then the reference model is freed

batch_size = 8                # pairs per micro-step: 16 sequences per forward
grad_accum = 8                # 64 pairs per optimizer step
max_iters = 1350              # about one epoch
lr = 1e-6
min_lr = 1e-7
warmup_iters = 150
weight_decay = 0.0
grad_clip = 10.0              # as in the DPO authors' code: a guard, rarely active

log_interval = 10
eval_interval = 250
eval_examples = 1000          # held-out pairs per evaluation
ckpt_interval = 250
dtype = "bfloat16"
compile = True

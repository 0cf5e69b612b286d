# Reward model for GPT-2 124M on Anthropic HH-RLHF, one GPU, from the HH SFT policy:
#   python data/hh/prepare.py && python train_sft.py config/sft_gpt2_hh.py
#   python train_reward_model.py config/rm_gpt2_hh.py
#   torchrun --standalone --nproc_per_node=8 train_reward_model.py config/rm_gpt2_hh.py \
#       --batch_size=8 --grad_accum=1       # 8 GPUs, the same 64 pairs per step
# Expected cost, ESTIMATES (not measured): about 12-15 GB of GPU memory at batch_size=16 pairs
# (32 sequences) x 512 tokens in bf16: weights + grads + AdamW state ~2 GB, activations ~10 GB at
# the longest batch; no vocabulary-sized logits, the head is one number per token. helpful-base +
# harmless-base hold ~86k training pairs, so one epoch is ~1,350 steps of 64 pairs: roughly
# 0.3-0.5 s per step on one A100/H100, 10-15 minutes in all with evaluation. If memory is short,
# halve batch_size and double grad_accum: the step is the same.
# Expected held-out accuracy for a model this size: ~60-65% (HH labels are noisy).
out_dir = "out/rm_gpt2_hh"
init_from = "out/sft_gpt2_hh/ckpt_best.pt"   # or 'gpt2' to skip SFT
train_data = "data/hh/out/prefs_train.jsonl"
val_data = "data/hh/out/prefs_test.jsonl"     # HH has no separate validation split
block_size = 512                              # longer prompts keep their end (the loader)
share_prompt = True                           # each prompt computed once for both answers

# reward_bias = the mean score of the SFT answers (HH's chosen side) on training prompts
bias_ref = "sft"
bias_data = "data/hh/out/sft_train.jsonl"
bias_examples = 4096

batch_size = 16               # pairs per micro-step: 32 sequences per forward
grad_accum = 4                # 64 pairs per optimizer step
num_epochs = 1.0              # one epoch: a second one mostly overfits
max_iters = -1                # derived from num_epochs
lr = 1e-5
min_lr = 1e-6
warmup_iters = 50
weight_decay = 0.0
grad_clip = 1.0
dropout = 0.0                 # the reward model's scores must not be noisy

log_interval = 10
eval_interval = 200
eval_examples = 2000
ckpt_interval = 200
dtype = "bfloat16"
compile = True

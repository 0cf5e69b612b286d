# SFT of GPT-2 124M on Anthropic HH-RLHF (helpful-base + harmless-base, the chosen answers),
# one GPU:
#   python data/hh/prepare.py && python train_sft.py config/sft_gpt2_hh.py
#   torchrun --standalone --nproc_per_node=8 train_sft.py config/sft_gpt2_hh.py \
#       --batch_size=8 --grad_accum=1       # 8 GPUs, the same 64 rows per step
# Expected cost, ESTIMATES (not measured): about 12-16 GB of GPU memory at batch_size=16 x 512
# tokens in bf16 (weights + grads + AdamW state ~2 GB, activations ~3 GB, and the (16, 512, 50257)
# logits with their fp32 log-softmax and its gradient ~6 GB at peak); roughly 0.1-0.2 s per step
# of 64 rows on one A100 (less on an H100), so one epoch (~86k examples, ~1,350 steps) takes
# about 5-10 minutes, plus evaluations and the 2 GB checkpoints. If memory is short, halve
# batch_size and double grad_accum: each update is still the mean over all its trained tokens.
out_dir = "out/sft_gpt2_hh"
init_from = "gpt2"
tokenizer = "gpt2"
train_data = "data/hh/out/sft_train.jsonl"
val_data = "data/hh/out/sft_test.jsonl"   # HH has train and test splits only
block_size = 512
dropout = 0.0

batch_size = 16               # rows per micro-step
grad_accum = 4                # 64 rows per optimizer step
length_buckets = True         # HH lengths vary a lot: bucketing saves most of the padding
max_iters = 1350              # about one epoch
lr = 2e-5
min_lr = 2e-6
warmup_iters = 100
weight_decay = 0.1
grad_clip = 1.0

log_interval = 10
eval_interval = 250
eval_examples = 1024          # held-out examples per evaluation
num_samples = 3
sample_tokens = 96
sample_temperature = 0.7      # greedy decoding of a small model tends to loop
ckpt_interval = 250
dtype = "bfloat16"
compile = True

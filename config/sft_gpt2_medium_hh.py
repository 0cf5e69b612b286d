# SFT of GPT-2 medium (355M) on Anthropic HH-RLHF, as config/sft_gpt2_hh.py does GPT-2 124M:
#   python data/hh/prepare.py && python train_sft.py config/sft_gpt2_medium_hh.py      # one GPU
#   torchrun --standalone --nproc_per_node=8 train_sft.py config/sft_gpt2_medium_hh.py \
#       --fsdp=True --grad_accum=1          # 8 GPUs, FSDP: the same 64 rows per step
# Memory per GPU, COMPUTED by dev/scale_memory.py (not measured on a GPU; docs/SCALE.md):
# 6.0 GB on one GPU with grad_checkpoint (weights, gradients and AdamW state 16 bytes a
# parameter, activations of 8 x 512 tokens, the logits of the answer tokens), 9.0 GB
# without it; 1.7 GB per GPU on 8 GPUs with FSDP. Time: not measured. The learning rate
# is scaled down from 124M's 2e-5 as a starting point, not tuned.
out_dir = "out/sft_gpt2_medium_hh"
init_from = "gpt2-medium"
tokenizer = "gpt2"
train_data = "data/hh/out/sft_train.jsonl"
val_data = "data/hh/out/sft_test.jsonl"   # HH has train and test splits only
block_size = 512
dropout = 0.0

batch_size = 8                # rows per micro-step
grad_accum = 8                # 64 rows per optimizer step
length_buckets = True         # HH lengths vary a lot: bucketing saves most of the padding
max_iters = 1350              # about one epoch
lr = 1e-5
min_lr = 1e-6
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
compile = True                # under FSDP each block is compiled before it is sharded
grad_checkpoint = True        # recompute each block in the backward: a fraction of the activations

# Reward model for GPT-2 XL (1.56B) on Anthropic HH-RLHF, from its HH SFT policy, as
# config/rm_gpt2_hh.py does GPT-2 124M:
#   python train_sft.py config/sft_gpt2_xl_hh.py
#   python train_reward_model.py config/rm_gpt2_xl_hh.py              # one GPU
#   torchrun --standalone --nproc_per_node=8 train_reward_model.py config/rm_gpt2_xl_hh.py \
#       --fsdp=True --grad_accum=1          # 8 GPUs, FSDP: the same 64 pairs per step
# Memory per GPU, COMPUTED by dev/scale_memory.py (not measured on a GPU; docs/SCALE.md):
# 26.0 GB on one GPU with grad_checkpoint (weights, gradients and AdamW state 16 bytes a
# parameter, activations of 8 pairs, each prompt once), 43.1 GB without it; 6.1 GB per GPU
# on 8 GPUs with FSDP. Time: not measured. The learning rate is scaled down from 124M's 1e-5 as
# a starting point, not tuned.
out_dir = "out/rm_gpt2_xl_hh"
init_from = "out/sft_gpt2_xl_hh/ckpt_best.pt"   # or 'gpt2-xl' to skip SFT
train_data = "data/hh/out/prefs_train.jsonl"
val_data = "data/hh/out/prefs_test.jsonl"     # HH has no separate validation split
block_size = 512                              # longer prompts keep their end (the loader)
share_prompt = True                           # each prompt computed once for both answers

# reward_bias = the mean score of the SFT answers (HH's chosen side) on training prompts
bias_ref = "sft"
bias_data = "data/hh/out/sft_train.jsonl"
bias_examples = 4096

batch_size = 8                # pairs per micro-step
grad_accum = 8                # 64 pairs per optimizer step
num_epochs = 1.0              # one epoch: a second one mostly overfits
max_iters = -1                # derived from num_epochs
lr = 3e-6
min_lr = 3e-7
warmup_iters = 50
weight_decay = 0.0
grad_clip = 1.0
dropout = 0.0                 # the reward model's scores must not be noisy

log_interval = 10
eval_interval = 200
eval_examples = 2000
ckpt_interval = 200
dtype = "bfloat16"
compile = True                # under FSDP each block is compiled before it is sharded
grad_checkpoint = True        # recompute each block in the backward: a fraction of the activations

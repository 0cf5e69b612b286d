# DPO for GPT-2 medium (355M) on Anthropic HH-RLHF, from its HH SFT policy, as
# config/dpo_gpt2_hh.py does GPT-2 124M:
#   python train_sft.py config/sft_gpt2_medium_hh.py
#   python train_dpo.py config/dpo_gpt2_medium_hh.py                      # one GPU
#   torchrun --standalone --nproc_per_node=8 train_dpo.py config/dpo_gpt2_medium_hh.py \
#       --fsdp=True --grad_accum=1          # 8 GPUs, FSDP: the same 64 pairs per step
# Memory per GPU, COMPUTED by dev/scale_memory.py (not measured on a GPU; docs/SCALE.md):
# 6.0 GB on one GPU with grad_checkpoint (weights, gradients and AdamW state 16 bytes a
# parameter, activations of 8 pairs, each prompt once, the logits of their answer tokens; the
# reference's log-probs are precomputed and the reference freed), 9.2 GB without it; 1.7
# GB per GPU on 8 GPUs with FSDP. Time: not measured. The DPO paper's settings, as for 124M.
out_dir = "out/dpo_gpt2_medium_hh"
init_from = "out/sft_gpt2_medium_hh/ckpt_best.pt"
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

batch_size = 8                # pairs per micro-step: 8 shared-prompt rows per forward
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
compile = True                # under FSDP each block is compiled before it is sharded
grad_checkpoint = True        # recompute each block in the backward: a fraction of the activations

# DPO on the offline toy world, from the toy SFT policy: CPU, under 2 minutes on 2 cores.
#   python data/toy/prepare.py && python train_sft.py && python data/toy/label.py && python train_dpo.py config/dpo_toy.py
# These are the values train_dpo.py's DEFAULTS already use, written out to copy and edit.
out_dir = "out/dpo_toy"
init_from = "out/sft_toy/ckpt_best.pt"
train_data = "data/toy/out/onpolicy_train.jsonl"  # the rankings, as their pairs
val_data = "data/toy/out/onpolicy_val.jsonl"     # more of the same labels, other prompts
block_size = 128

loss_type = "sigmoid"
beta = 0.5                    # 0.1 (the paper's): KL 19 nats and garbled answers on these pairs
label_smoothing = 0.0
rpo_alpha = 0.0               # > 0 adds the chosen answer's NLL: that is RPO, not DPO
precompute_ref_logps = False

batch_size = 16
grad_accum = 1
max_iters = 400
lr = 3e-4
min_lr = 3e-5
warmup_iters = 10
weight_decay = 0.0

log_interval = 10
eval_interval = 50
ckpt_interval = 100

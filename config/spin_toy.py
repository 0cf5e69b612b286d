# SPIN on the offline toy world (Chen et al. 2024): train_dpo.py on data/toy/spin.py's pairs
# (chosen = the demonstration, rejected = pi_t's own answer), from pi_t and against it.
#   python data/toy/spin.py --policy=out/sft_toy/ckpt_best.pt --prefix=spin1
#   python train_dpo.py config/spin_toy.py
# Iteration t + 1: spin.py --policy=out/spin1_toy/ckpt_last.pt --prefix=spin2, then this config
# with --init_from=out/spin1_toy/ckpt_last.pt and the spin2 files (pipeline.py --methods=spin).
out_dir = "out/spin1_toy"
init_from = "out/sft_toy/ckpt_best.pt"   # pi_t; the reference is the same weights (reference '')
train_data = "data/toy/out/spin/spin1_train.jsonl"
val_data = "data/toy/out/spin/spin1_val.jsonl"  # val_accuracy here is SPIN's accuracy
block_size = 128

loss_type = "sigmoid"         # SPIN's logistic loss l(t) = log(1 + exp(-t)), Eq. 4.7
beta = 0.1                    # the paper's lambda
label_smoothing = 0.0
rpo_alpha = 0.0

batch_size = 16
grad_accum = 1
max_iters = 250               # 2000 pairs, two epochs (ai_stages.SPIN_STEPS)
lr = 3e-5                     # 3e-4 (DPO's here): 14 nats from SFT and -0.92 gold on three seeds; the
min_lr = 3e-6                 # paper's 5e-7 is a fortieth of its SFT lr (docs/AI_FEEDBACK.md)
warmup_iters = 10
weight_decay = 0.0

log_interval = 10
eval_interval = 50
ckpt_interval = 50

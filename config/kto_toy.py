# KTO on the offline toy world: single answers of the SFT policy, each labelled desirable or not
# by the annotators (data/toy/label.py), from the toy SFT policy. CPU, a few minutes on one core.
#   python data/toy/label.py && python train_kto.py config/kto_toy.py
out_dir = "out/kto_toy"
init_from = "out/sft_toy/ckpt_best.pt"
train_data = "data/toy/out/onpolicy_unpaired.jsonl"    # noisy labels: beats its prompt's median
val_data = "data/toy/out/onpolicy_unpaired_val.jsonl"  # held-out answers, noise-free labels
block_size = 128

beta = 0.5                    # 0.1: KL 30 nats, 54% wins (docs/RESULTS.md)
desirable_weight = 1.0        # label.py's split is about even: lambda_D n_D / (lambda_U n_U) ~ 1
undesirable_weight = 1.0

batch_size = 16               # answers per micro-batch (and 16 mismatched pairs for the KL)
grad_accum = 1
max_iters = 400
lr = 3e-4
min_lr = 3e-5
warmup_iters = 10
weight_decay = 0.0

log_interval = 10
eval_interval = 50
ckpt_interval = 100

# Rejection-sampling fine-tuning on the offline toy world: the SFT policy fine-tuned on its own
# answers that the reward models liked best (python rejection_sampling.py writes them), from the
# toy SFT policy, 240 steps (two epochs of 1,900 answers), under a minute on one core.
#   python rejection_sampling.py && python train_sft.py config/rs_toy.py
out_dir = "out/rs_toy"
init_from = "out/sft_toy/ckpt_best.pt"
train_data = "data/toy/out/rs_train.jsonl"
val_data = "data/toy/out/rs_val.jsonl"      # the kept answers to 100 other prompts
block_size = 128

batch_size = 16
max_iters = 240
lr = 3e-4                      # DPO's rate: a tenth of SFT's from scratch
min_lr = 3e-5
warmup_iters = 10
weight_decay = 0.1
grad_clip = 1.0

log_interval = 20
eval_interval = 40
eval_examples = 100
num_samples = 3
sample_tokens = 64
sample_temperature = 0.0
ckpt_interval = 80

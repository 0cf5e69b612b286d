# Reward model on the offline toy world, from the toy SFT policy: whole rankings of its own answers,
# 5 epochs, about 3 minutes on one core (python data/toy/label.py writes them).
#   python data/toy/prepare.py && python train_sft.py && python data/toy/label.py && python train_reward_model.py config/rm_toy.py
# These are the values train_reward_model.py's DEFAULTS already use, written out to copy and edit.
out_dir = "out/rm_toy"
init_from = "out/sft_toy/ckpt_best.pt"
train_data = "data/toy/out/onpolicy_train.jsonl"  # the SFT policy's answers, ranked (label.py)
val_data = "data/toy/out/onpolicy_val.jsonl"    # more of the same labels, other prompts: picks ckpt_best
block_size = 128

use_margin = False
center_coef = 0.0
bias_ref = "sft"                                # reward_bias = mean score of the SFT answers
bias_data = "data/toy/out/onpolicy_samples.jsonl"  # the SFT policy's own answers
bias_examples = 1024

batch_size = 8                                  # rankings per step (group_rankings)
grad_accum = 1
group_rankings = True                           # each answer scored once for all its pairs
num_epochs = 5.0
max_iters = -1
lr = 1e-3
min_lr = 1e-4
warmup_iters = 10
weight_decay = 0.1
grad_clip = 1.0
dropout = 0.0

log_interval = 10
eval_interval = 50
ckpt_interval = 100

# RLAIF's judge on the offline toy world: the SFT recipe, from scratch, on the demonstrations and
# the judge format of a few hundred labelled pairs (data/toy/rlaif.py). Twice the positions of
# sft_toy.py: a question and two answers are up to 220 bytes.
#   python data/toy/rlaif.py && python train_sft.py config/judge_toy.py
out_dir = "out/judge_toy"
init_from = "scratch"
tokenizer = "byte"
train_data = "data/toy/out/rlaif/judge_train.jsonl"
val_data = "data/toy/out/rlaif/judge_val.jsonl"   # the judge format only: the best checkpoint judges best

n_layer = 4
n_head = 4
n_embd = 96
dropout = 0.0
block_size = 256

batch_size = 16
max_iters = 2000
lr = 5e-3
min_lr = 5e-4
warmup_iters = 50
weight_decay = 0.1
grad_clip = 1.0

log_interval = 50
eval_interval = 200
eval_examples = 256
num_samples = 3
sample_tokens = 16
sample_temperature = 0.0
ckpt_interval = 400

# SFT on the offline toy world, from scratch: a ~0.48M-parameter byte-level GPT on CPU.
#   python data/toy/prepare.py && python train_sft.py config/sft_toy.py
# These are the values train_sft.py's DEFAULTS already use, written out to copy and edit.
out_dir = "out/sft_toy"
init_from = "scratch"
tokenizer = "byte"
train_data = "data/toy/out/sft_train.jsonl"
val_data = "data/toy/out/sft_val.jsonl"

n_layer = 4
n_head = 4
n_embd = 96
bias = True
dropout = 0.0
block_size = 128

batch_size = 16
grad_accum = 1
length_buckets = False        # toy lengths track the answer style: bucketing makes batches one-style
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
sample_tokens = 64
sample_temperature = 0.0
ckpt_interval = 400
device = "auto"

# PPO for GPT-2 124M on Anthropic HH-RLHF prompts, one GPU, from the HH SFT policy and reward model:
#   python data/hh/prepare.py && python train_sft.py config/sft_gpt2_hh.py
#   python train_reward_model.py config/rm_gpt2_hh.py
#   python train_ppo.py config/ppo_gpt2_hh.py
#   torchrun --standalone --nproc_per_node=8 train_ppo.py config/ppo_gpt2_hh.py \
#       --rollout_batch_size=8 --minibatch_size=2 --micro_batch_size=2   # 8 GPUs, same batches
# Expected cost, ESTIMATES (not measured): four 124M models (policy, reference, reward model,
# critic) plus AdamW state for two of them are ~5 GB in fp32; a micro-batch of 8 responses x 512
# tokens adds ~2-3 GB of activations per trained model, plus the (8, 54, 50257) response logits
# with their log-softmax and entropy (~1 GB): about 12-16 GB in all with bf16 autocast. One
# iteration = generating 64 x up to 128 tokens with the KV cache (~2-4 s) plus 4 passes x 4 minibatches
# of policy and critic updates (~3-5 s) on one A100/H100, so the 400 iterations (25,600
# episodes) take roughly 30-45 minutes, evaluations included.
# The hyperparameters are a starting point after the "N+ implementation details of RLHF" and
# Ziegler et al. 2019, not tuned here; watch kl, eos_rate and the samples.
out_dir = "out/ppo_gpt2_hh"
init_from = "out/sft_gpt2_hh/ckpt_best.pt"
reward_model = "out/rm_gpt2_hh/ckpt_best.pt"
gold_judge = ""                               # no gold judge outside the toy world
train_prompts = "data/hh/out/prompts_train.jsonl"
val_prompts = "data/hh/out/prompts_test.jsonl"  # HH has no separate validation split
block_size = 512                              # long conversations keep their end (the loader)

# rollout: 64 responses of at most 128 tokens per iteration; an answer cut without EOS scores -1
rollout_batch_size = 64
max_new_tokens = 128                          # 4% of HH chosen answers are longer (26% exceed 53)
temperature = 0.7
missing_eos_penalty = 1.0
missing_eos_mode = "replace"

# Ziegler et al.'s adaptive KL controller
beta = 0.15
adaptive_kl = True
target_kl = 6.0
kl_horizon = 10000

# PPO: 4 epochs of 4 minibatches of 16, in micro-batches of 8
num_iterations = 4
minibatch_size = 16
micro_batch_size = 8
epsilon_low = 0.2
epsilon_high = 0.2
cliprange_value = 0.2
vf_coef = 0.1
lr = 3e-6
critic_lr = 1e-5
eps = 1e-5
grad_clip = 1.0
max_iters = 400

log_interval = 1
eval_interval = 25
eval_examples = 256
sample_interval = 10
ckpt_interval = 25
save_every = 50                               # ckpt_iter{N}.pt for the reward-vs-KL plot
dtype = "bfloat16"

# PPO for GPT-2 XL (1.56B) on Anthropic HH-RLHF prompts, from its HH SFT policy and reward
# model, as config/ppo_gpt2_hh.py does GPT-2 124M:
#   python train_reward_model.py config/rm_gpt2_xl_hh.py
#   python train_ppo.py config/ppo_gpt2_xl_hh.py                      # one GPU
#   torchrun --standalone --nproc_per_node=8 train_ppo.py config/ppo_gpt2_xl_hh.py \
#       --fsdp=True --rollout_batch_size=8 --minibatch_size=2 --micro_batch_size=2   # 8 GPUs
# Memory per GPU, COMPUTED by dev/scale_memory.py (not measured on a GPU; docs/SCALE.md):
# 67.4 GB on one GPU with grad_checkpoint: the policy and the critic with their gradients and
# AdamW state (16 bytes a parameter each), the frozen reference and reward model (4 each), and
# the larger of the update (activations and logits of 8 rows) and the rollout (the KV cache of
# 64 answers); 78.4 GB without checkpointing; 29.6 GB per GPU on 8 GPUs with FSDP (the
# policy and critic sharded, gathered whole for the rollout; reference and reward model whole
# on each GPU). Time: not measured. Learning rates scaled down from 124M's as a starting
# point, not tuned; watch kl, eos_rate and the samples.
out_dir = "out/ppo_gpt2_xl_hh"
init_from = "out/sft_gpt2_xl_hh/ckpt_best.pt"
reward_model = "out/rm_gpt2_xl_hh/ckpt_best.pt"
gold_judge = ""                               # no gold judge outside the toy world
train_prompts = "data/hh/out/prompts_train.jsonl"
val_prompts = "data/hh/out/prompts_test.jsonl"  # HH has no separate validation split
block_size = 512                              # long conversations keep their end (the loader)

# rollout: 64 responses of at most 128 tokens per iteration; an answer cut without EOS scores -1
rollout_batch_size = 64
max_new_tokens = 128
temperature = 0.7
missing_eos_penalty = 1.0
missing_eos_mode = "replace"

# Ziegler et al.'s adaptive KL controller
beta = 0.15
adaptive_kl = True
target_kl = 6.0
kl_horizon = 10000

# PPO: 4 epochs of 4 minibatches of 16, in micro-batches of 8 rows of similar prompt lengths
num_iterations = 4
minibatch_size = 16
micro_batch_size = 8
epsilon_low = 0.2
epsilon_high = 0.2
cliprange_value = 0.2
vf_coef = 0.1
lr = 1e-6
critic_lr = 3e-6
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
grad_checkpoint = True                        # the policy's and the critic's blocks

# PPO on the offline toy world: CPU, a few minutes on 2 cores.
#   python data/toy/prepare.py && python train_sft.py && python train_reward_model.py
#   python train_ppo.py config/ppo_toy.py
# These are the values train_ppo.py's DEFAULTS already use, written out to copy and edit.
out_dir = "out/ppo_toy"
init_from = "out/sft_toy/ckpt_best.pt"
reward_model = "out/rm_toy/ckpt_best.pt"
gold_judge = "toy"                  # log the judge's reward of the same rollouts next to the RM's
train_prompts = "data/toy/out/prompts_train.jsonl"
val_prompts = "data/toy/out/prompts_eval.jsonl"
block_size = 128

rollout_batch_size = 64
max_new_tokens = 64
temperature = 1.0
missing_eos_penalty = 1.0
missing_eos_mode = "replace"

beta = 0.2                      # 0.1 and 0.02 let PPO exploit the reward model: gold falls (docs/RESULTS.md)
adaptive_kl = False
gamma = 1.0
lam = 0.95

num_iterations = 4
minibatch_size = 16
micro_batch_size = 16
epsilon_low = 0.2
epsilon_high = 0.2
cliprange_value = 0.2
vf_coef = 0.1
lr = 5e-5                       # 3e-4: approx_kl 0.12 per iteration, KL 4-7 nats in 10 (docs/RESULTS.md)
critic_lr = 5e-5
eps = 1e-5
grad_clip = 1.0
max_iters = 30

log_interval = 1
eval_interval = 10
eval_examples = 96
sample_interval = 10
ckpt_interval = 20
save_every = 5                      # ckpt_iter{N}.pt: the points of the over-optimisation plot

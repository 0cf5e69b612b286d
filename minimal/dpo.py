"""
DPO in one file: the reading path of train_dpo.py, CleanRL style. The same loss, the same
numbered steps, the same pure functions (imported, never copied), on the offline toy world's
preference pairs, in one process: no resume, no locks, no DDP, no cached reference, no
checkpoints. tests/test_minimal.py pins its first steps to train_dpo.py's, loss for loss.

    python data/toy/prepare.py && python train_sft.py && python data/toy/label.py
    python minimal/dpo.py                      # 400 steps, a couple of minutes on a CPU
    python minimal/dpo.py --beta=0.1           # any key of ARGS below

The policy starts as the SFT model and the reference is a frozen copy of it. One step:
  1. this step's pairs: the chosen and the rejected answer of each, right-padded rows, chosen
     rows then rejected rows, in one forward;
  2. the reference's log-probs of the same answers (no gradient);
  3. the DPO loss of the policy's log-ratios, -log sigma(beta * (h_chosen - h_rejected)) with
     h = log pi(y|x) - log pi_ref(y|x) summed over the answer's tokens, forward and backward;
  4. clip, update.
Watch logps_chosen: with plain DPO it usually falls while the margin rises (both answers become
less likely, the rejected one faster).
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from checkpoint import init_policy  # noqa: E402
from config import parse_config  # noqa: E402
from data import loader  # noqa: E402
from layouts import collate_pairs, pair_logprobs  # noqa: E402
from optim import configure_optimizer, get_lr, set_lr  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402
from train_dpo import dpo_loss, pair_metrics  # noqa: E402

# the hyperparameters: train_dpo.py's defaults for the toy world
ARGS = dict(
    init_from="out/sft_toy/ckpt_best.pt",              # the SFT policy
    train_data="data/toy/out/onpolicy_train.jsonl",    # label.py's rankings, as their pairs
    val_data="data/toy/out/onpolicy_val.jsonl",        # more of the same labels, other prompts
    block_size=128,
    seed=1337,
    max_iters=400,              # optimizer steps
    batch_size=16,              # pairs per step (2 x 16 rows per forward)
    beta=0.5,                   # the strength of the KL anchor
    lr=3e-4,                    # linear warmup, then cosine decay to min_lr
    min_lr=3e-5,
    warmup_iters=10,
    grad_clip=1.0,
    eval_interval=50,           # held-out loss and implicit-reward accuracy every N steps
    eval_examples=160,
)


def batch_loss(model, ref, batch, beta):
    """The DPO loss of each pair of a batch (B,), keeping the graph, and the numbers worth
    watching (train_dpo.pair_metrics)."""
    logps = pair_logprobs(model, batch)  # summed and averaged log-probs, chosen and rejected
    with torch.no_grad():
        ref_chosen, ref_rejected, _, _ = pair_logprobs(ref, batch)
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps[0], logps[1], ref_chosen,
                                                        ref_rejected, beta)  # (B,) each
    return losses, pair_metrics(losses, chosen_rewards, rejected_rewards, logps)


def main(argv=None, **overrides):
    """Train; returns the training loss of every step and the final weights (for the test)."""
    a = parse_config(dict(ARGS, **overrides), argv, __doc__)  # --key=value, --help; a.lr, ...
    torch.manual_seed(a.seed)

    # -------------------------------------------------------------------------
    # models (the policy and its frozen reference) and data (preference pairs)
    model, tok_name = init_policy(a.init_from)
    ref, _ = init_policy(a.init_from)  # the same weights, frozen
    ref.eval().requires_grad_(False)
    enc = get_tokenizer(tok_name)
    train = loader.load_preferences(a.train_data, enc, a.block_size)
    val = loader.load_preferences(a.val_data, enc, a.block_size)[:a.eval_examples]
    optimizer = configure_optimizer(model, a.lr, 0.0, (0.9, 0.95), 1e-8, "cpu")
    losses = []

    for step in range(a.max_iters):
        t0 = time.time()
        lr = get_lr(step, a.lr, a.min_lr, a.warmup_iters, a.max_iters)
        set_lr(optimizer, lr)
        # ---------------------------------------------------------------------
        # ALGO LOGIC
        # 1. this step's pairs: chosen rows, then rejected rows, (2B, T) right-padded
        rows = loader.batch_indices(len(train), a.batch_size, step, a.seed)
        batch = collate_pairs([train[i] for i in rows], enc.eot_token)
        # 2-3. the reference's log-probs, and the loss of the policy's log-ratios against them
        step_losses, metrics = batch_loss(model, ref, batch, a.beta)
        loss = step_losses.mean()
        loss.backward()
        # 4. clip, update
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())

        # ---------------------------------------------------------------------
        # what a person watches; the held-out pairs every eval_interval steps
        if step % 10 == 0 or step + 1 == a.max_iters:
            print(f"step {step + 1:4d} | "
                  + " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                  + f" | grad_norm {grad_norm.item():.3g} | lr {lr:.2e} | "
                  f"{1000 * (time.time() - t0):.0f} ms", flush=True)
        if (step + 1) % a.eval_interval == 0 or step + 1 == a.max_iters:
            model.eval()
            with torch.no_grad():
                held = [batch_loss(model, ref, collate_pairs(val[k:k + a.batch_size],
                                                             enc.eot_token), a.beta)[1]
                        for k in range(0, len(val), a.batch_size)]
            model.train()
            n = [len(val[k:k + a.batch_size]) for k in range(0, len(val), a.batch_size)]
            print("  held-out: " + " | ".join(
                f"{key} {sum(m[key] * k for m, k in zip(held, n)) / sum(n):.4g}"
                for key in ("loss", "margin", "accuracy")), flush=True)
    return dict(losses=losses, model=model.state_dict())


if __name__ == "__main__":
    main()

"""
Steps 1-3 of online RL, shared by PPO, GRPO and the evaluation: the policy answers a batch of
prompts (model.generate: KV cache, temperature, an answer ends at its first EOS), the log-probs of
its answers under the policy and the reference (policy_forward: one forward over prompt + answer),
and their scores (the reward model at each answer's EOS, or a programmatic reward of the texts).
"""

import importlib.util
import math
import numbers
import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

import config
import ops
from data import loader
from tokenizer import decode_response

# -----------------------------------------------------------------------------
# rewards: the reward model, or a programmatic function of the texts


def load_reward_fn(spec):
    """
    A programmatic reward f(prompt, response) -> float from its spec: 'toy_gold' (the toy
    world's judge), 'byte_count:c' (occurrences of the character c), or 'file.py:function'
    (any function of a Python file). '' -> None: the reward model scores.

    The contract, checked on every call (reward_contract): a function of two strings that
    returns a real number (a Python int or float, or a numpy scalar) with |r| <= MAX_REWARD. An
    exception inside it, a sys.exit, another type, a non-finite or a huge value stop the run with
    one line naming the function and the prompt (the toy judge's "not a toy-world prompt" too).
    """
    if not spec:
        return None
    if spec == "toy_gold":
        from data.toy.judge import gold_reward
        fn = gold_reward
    elif spec.startswith("byte_count:") and len(spec) == len("byte_count:") + 1:
        char = spec[-1]
        fn = lambda prompt, response: float(response.count(char))  # noqa: E731
    else:
        fn = load_file_function(spec, "reward_fn", "'', 'toy_gold', 'byte_count:<one character>' "
                                                    "or 'path/to/file.py:function'")
    return reward_contract(fn, f"reward_fn={spec!r}")


def load_file_function(spec, key, expected):
    """The function `name` of the Python file `path`, from a spec 'path.py:name' given as config
    key `key` (expected: what the key accepts, for the error), or a ConfigError naming the key:
    a bad spec, a missing file, a file that fails to run, no such function."""
    path, sep, name = spec.rpartition(":")
    config.require(sep and path.endswith(".py") and name.isidentifier(),
                   f"{key}={spec!r}: expected {expected}")
    config.require(os.path.isfile(path), f"{key}={spec!r}: the file {path} does not exist")
    try:
        module_spec = importlib.util.spec_from_file_location(f"{key}_module", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except BaseException as e:  # a syntax error, an import error, a sys.exit in the file
        if isinstance(e, KeyboardInterrupt):
            raise
        raise config.ConfigError(f"{key}={spec!r}: {path} failed to run: {e!r}") from None
    fn = getattr(module, name, None)
    config.require(callable(fn), f"{key}={spec!r}: {path} has no function {name!r}")
    return fn


def toy_gold_judge():
    """The toy world's gold judge under the reward contract (a foreign prompt: one line)."""
    from data.toy.judge import gold_reward
    return reward_contract(gold_reward, "the toy gold judge")


MAX_REWARD = 1e6  # |r| beyond this is a bug (or a unit error), not a reward: advantages would
                  # lose every other signal in float32, and whitening hides it


def reward_contract(fn, name):
    """fn(prompt, response) checked against the reward contract (see load_reward_fn): returns
    a float, or raises a ConfigError naming `name` and the prompt."""
    def checked(prompt, response):
        where = f"{name} on the prompt {prompt[:80]!r}"
        try:
            value = fn(prompt, response)
        except (Exception, SystemExit) as e:  # SystemExit: a sys.exit() inside must not end
            raise config.ConfigError(         # the run with status 0 and nothing trained
                f"{where}: raised {type(e).__name__}: {str(e)[:200]}") from None
        if isinstance(value, (bool, complex)) or not isinstance(value, numbers.Real):
            raise config.ConfigError(f"{where}: returned {type(value).__name__} "
                                     f"{str(value)[:80]}, not a real number")
        try:
            r = float(value)
        except OverflowError:  # an int with hundreds of digits
            r = math.inf
        if not math.isfinite(r) or abs(r) > MAX_REWARD:
            raise config.ConfigError(f"{where}: returned {str(value)[:40]}, outside the finite "
                                     f"range |r| <= {MAX_REWARD:g}")
        return r
    return checked


def make_reward(reward_model, reward_fn, batch_size):
    """The step-3 scorer reward(prompts, responses, seq, mask) -> (B,) float: the reward model
    at each row's last real token of the exact ids the policy produced (never re-tokenised
    text), batch_size rows at a time, or a programmatic reward_fn of the texts."""
    if reward_fn is not None:
        return lambda prompts, responses, seq, mask: torch.tensor(
            [reward_fn(p, r) for p, r in zip(prompts, responses)], device=seq.device)
    return lambda prompts, responses, seq, mask: reward_model.score(seq, mask, batch_size)


def penalise_missing_eos(scores, has_eos, penalty, mode):
    """A response cut at max_new_tokens is no finished answer, and the RM scores it at a token it
    never saw as an end: 'replace' its score by -penalty (the "N+ implementation details of RLHF"
    use -1), or 'subtract' the penalty (TRL's missing_eos_penalty); '' leaves it. (B,) -> (B,)
    Test: tests/test_ppo.py::test_penalise_missing_eos_by_hand"""
    if mode == "replace":
        return torch.where(has_eos, scores, torch.full_like(scores, -penalty))
    return torch.where(has_eos, scores, scores - penalty) if mode == "subtract" else scores


def length_penalised(scores, lengths, coef):
    """score - coef * |y|, |y| the answer's tokens (EOS included): the length penalty of the
    design notes' remedies for reward hacking. A reward model that pays for length is the most
    common hack (Singhal et al. 2023, "A Long Way to Go": 70-90% of PPO's reward gain was
    length on their tasks); coef = 0 leaves the scores. scores, lengths (B,) -> (B,)
    Test: tests/test_ppo.py::test_length_penalty_by_hand"""
    return scores - coef * lengths.to(scores.dtype) if coef else scores


# -----------------------------------------------------------------------------
# forwards and the rollout


def trim_padding(seq, mask, P):
    """
    The columns of a batch of left-padded prompts (P columns) and right-padded answers that hold
    a real token in at least one row: the left columns that are padding in every row and the
    columns after every answer's end go. seq, mask (B, P + N) -> seq, mask (B, P' + n), P', n:
    every prompt still ends in column P' - 1, and n is the longest answer. Positions come from the
    mask and pads are never attended to, so each row's numbers are those of the untrimmed batch;
    only the shapes of the matmuls change, and with them the last bits of float sums.
    Test: tests/test_scale.py::test_trim_padding_by_hand
    """
    first_real = mask[:, :P].any(0).int().argmax()  # every prompt ends at P - 1: one exists
    longest = mask[:, P:].sum(1).max()  # answers' masks are 1 up to their end, then 0
    first, n = torch.stack([first_real, longest.to(first_real.dtype)]).tolist()  # one sync
    return seq[:, first:P + n], mask[:, first:P + n], P - first, n


def policy_forward(policy, seq, mask, P, temperature, critic=None, entropy=False):
    """
    One forward of prompt + response, seq and mask (B, P + N) with the prompts left-padded to P
    columns. Every prompt ends in column P - 1, so the hidden state in column P - 1 + t has seen the
    prompt and the response tokens < t: its logits predict response token t (the LM head runs on
    those N columns only), and it is the state s_t the critic values. The columns that are padding
    in every row are dropped first (trim_padding): a rollout's prompts are padded to its longest,
    and on real prompts most positions would be padding. Returns logprobs (B, N) of the response
    tokens under logits / T, the entropy (B, N) of that distribution (or None), and values (B, N)
    (None without a critic), 0 after each batch's longest answer. critic: a ScalarModel (separate
    critic) or an nn.Linear value head on this policy's trunk.
    Test: tests/test_ppo.py::test_training_logprobs_equal_sampling_logprobs
    """
    N = seq.size(1) - P
    seq, mask, P, n = trim_padding(seq, mask, P)  # (B, P' + n)
    h = policy.hidden_states(seq, mask)[:, P - 1:-1]  # (B, n, C): the states before each token
    logits = policy.lm_head(h).float() / temperature  # (B, n, V); no logits for the prompt
    logprobs = ops.logprobs_of(logits, seq[:, P:])  # (B, n)
    ent = ops.entropy_from_logits(logits) if entropy else None
    if isinstance(critic, nn.Linear):
        values = critic(h).squeeze(-1).float()
    else:
        values = critic.values(seq, mask)[:, P - 1:-1].float() if critic is not None else None
    return tuple(None if x is None else F.pad(x, (0, N - n)) for x in (logprobs, ent, values))


@dataclass
class Rollout:
    """A batch of sampled answers and what the update needs. (B, N) tensors are aligned with the
    response tokens; resp_mask is 1 on them up to and including the EOS."""
    seq: torch.Tensor            # (B, P + N) prompt + response ids, prompts left-padded to P
    mask: torch.Tensor           # (B, P + N) attention mask: 0 on left pads and after the EOS
    P: int                       # prompt columns
    resp_mask: torch.Tensor      # (B, N) float
    logprobs: torch.Tensor       # (B, N) log pi_old(a_t|s_t), recomputed by a training forward
    sample_logprobs: torch.Tensor  # (B, N) the same, as the sampler saw them (a sanity check)
    ref_logprobs: torch.Tensor   # (B, N) log pi_ref(a_t|s_t), or None without a reference
    values: torch.Tensor         # (B, N) the critic's V(s_t), or None without a critic
    entropy: torch.Tensor        # (B, N) of pi_old at each step
    scores: torch.Tensor         # (B,) the reward (missing-EOS and length penalties applied)
    has_eos: torch.Tensor        # (B,) bool
    prompts: list                # B prompt texts
    responses: list              # B response texts (decode_response)
    loss_mask: torch.Tensor = None  # (B, N) the tokens the update trains on, when not resp_mask
                                    # (GRPO's 'mask' mode leaves answers without an EOS out)


@torch.no_grad()
def rollout(policy, ref, critic, reward, batch, enc, cfg, proc, generator=None):
    """
    Steps 1-3 and the critic's values for one batch (ids, mask, texts) of left-padded prompts
    (B, P). The forwards run in micro-batches of micro_batch_size rows of similar prompt lengths,
    policy and reference on the same ones, so at the first iteration (policy == reference) the KL
    is exactly 0; the update's micro-batches hold other rows, so its first ratio is 1 to float
    precision (RLHF_DETAILS item 17), not bitwise. Returns a Rollout.
    """
    prompt_ids, prompt_mask, prompts = batch
    P, mbs = prompt_ids.size(1), cfg.micro_batch_size
    with proc.autocast:
        tokens, resp_mask, sample_logprobs = policy.generate(
            prompt_ids, attention_mask=prompt_mask, max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, top_k=cfg.top_k or None,
            top_p=cfg.top_p if cfg.top_p < 1.0 else None, eos_token_id=enc.eot_token,
            generator=generator)
    seq = torch.cat([prompt_ids, tokens], 1)  # (B, P + N)
    mask = torch.cat([prompt_mask, resp_mask], 1)  # (B, P + N); 0 on the pads after an EOS
    # micro-batches of rows of similar prompt lengths, so that each drops most of its padding
    # (policy_forward); the results go back to the rows' own order
    order = prompt_mask.sum(1).argsort(stable=True)  # (B,)
    parts = []
    for rows in order.split(mbs):
        s, m = seq[rows], mask[rows]
        with proc.autocast:
            lp, ent, values = policy_forward(policy, s, m, P, cfg.temperature, critic, True)
            # frozen models need no autograd record at all; their inference tensors are only
            # read by functional ops outside (cat, arithmetic), which return normal tensors
            with torch.inference_mode():
                ref_lp = policy_forward(ref, s, m, P, cfg.temperature)[0] if ref else None
        parts.append((lp, ent, values, ref_lp))
    back = order.argsort()  # sorted position of each row
    lp, ent, values, ref_lp = (torch.cat(x)[back] if x[0] is not None else None
                               for x in zip(*parts))
    # one device-to-host copy for the whole batch, not two small ones (and a sync) per row
    responses = [decode_response(enc, [t for t, keep in zip(row, row_mask) if keep])
                 for row, row_mask in zip(tokens.tolist(), resp_mask.tolist())]
    has_eos = ((tokens == enc.eot_token) & resp_mask.bool()).any(1)  # (B,)
    with proc.autocast:
        scores = reward(prompts, responses, seq, mask).float()
    scores = penalise_missing_eos(scores, has_eos, cfg.missing_eos_penalty, cfg.missing_eos_mode)
    scores = length_penalised(scores, resp_mask.sum(1), cfg.length_penalty)
    return Rollout(seq, mask, P, resp_mask.float(), lp, sample_logprobs, ref_lp, values, ent,
                   scores, has_eos, prompts, responses)


def prompt_batch(prompts, rows, enc, proc, repeat=1):
    """Left-padded ids, mask (B * repeat, P) on the device and the texts of prompts[rows], each
    row `repeat` times in a row (GRPO's group of samples per prompt)."""
    examples = [prompts[i] for i in rows for _ in range(repeat)]
    ids, attn = loader.collate_left([e["ids"] for e in examples], enc.eot_token)
    return ids.to(proc.device), attn.to(proc.device), [e["prompt"] for e in examples]


# -----------------------------------------------------------------------------
# the prompts and demonstrations of a PPO or GRPO run


def load_demos(cfg, enc, proc):
    """PPO-ptx's rows as ptx(update, k) -> the k-th minibatch's batch of iteration `update`
    (a function of the two alone, for exact resume; None when ptx_coef = 0), and the held-out
    demonstrations of val_demo_nll as batches (rank 0 scores them)."""
    ptx, demo_val = None, []
    if cfg.ptx_coef > 0:
        rows = loader.load_sft(cfg.ptx_data, enc, cfg.block_size)
        per_update = cfg.num_iterations * (cfg.rollout_batch_size // cfg.minibatch_size)

        def ptx_batch(update, k):
            picked = loader.batch_indices(len(rows), cfg.ptx_batch_size, (update - 1) * per_update
                                          + k, cfg.seed, proc.rank, proc.world_size)
            return tuple(t.to(proc.device) for t in loader.collate([rows[i] for i in picked],
                                                                   enc.eot_token))
        ptx = ptx_batch
    if cfg.demo_val_data:
        rows = loader.load_sft(cfg.demo_val_data, enc, cfg.block_size)
        rows = rows[:cfg.demo_val_examples] if cfg.demo_val_examples > 0 else rows
        demo_val = [loader.collate(rows[i:i + cfg.micro_batch_size], enc.eot_token)
                    for i in range(0, len(rows), cfg.micro_batch_size)]
    return SimpleNamespace(ptx=ptx, val=demo_val)


def family_weights(spec):
    """{family: k} from prompt_weights' 'harmful=3,lookalike=3' ('' = {}), or a ConfigError
    naming the key."""
    weights = {}
    for part in filter(None, spec.split(",")):
        name, _, k = part.partition("=")
        if not name or not k.isdigit() or int(k) < 1:
            raise config.ConfigError(f"config key 'prompt_weights' must be family=k pairs, k a "
                                     f"whole number >= 1 ('harmful=3,lookalike=3'), got {spec!r}")
        weights[name] = int(k)
    return weights


def repeat_by_family(prompts, weights):
    """The prompts with each one of a weighted family written k times in its place, so that
    sampling the list draws that family k times as often (weights {family: k}; a prompt of no
    weighted family, or with none, appears once). Llama 2 and Safe RLHF give RL its own share of
    safety prompts; here the toy world's 'family' tag picks them."""
    return [p for p in prompts for _ in range(weights.get(p.get("family"), 1))]


def load_prompts(cfg, enc):
    """Training and held-out prompts, cut from the left to leave max_new_tokens of room; the
    training prompts of prompt_weights' families repeated (repeat_by_family)."""
    train = loader.load_prompts(cfg.train_prompts, enc, cfg.block_size, cfg.max_new_tokens)
    train = repeat_by_family(train, family_weights(cfg.prompt_weights))
    val = loader.load_prompts(cfg.val_prompts, enc, cfg.block_size, cfg.max_new_tokens) \
        if cfg.val_prompts else []
    return train, val[:cfg.eval_examples] if cfg.eval_examples > 0 else val

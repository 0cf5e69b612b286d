"""
GPT-2 in one file, shaped for RLHF.

Differences from a plain language model, all needed by the RLHF stages:
- logits for EVERY position (log-probs of whole responses), not just the last one, or only at the
  positions whose log-probs are read (logits_at);
- exact attention masks: left-padded prompts (generation) and right-padded batches (training)
  give the same numbers at real positions as each row run alone; a 4-D mask is taken as given
  (layouts.shared_prompt_mask: a prompt computed once for several answers);
- ScalarModel: the same trunk with a scalar head, used as reward model (score) and as PPO critic
  (values);
- generate() with a pre-allocated KV cache, per-row EOS stopping and the sampled tokens'
  log-probs.

Module names mirror Hugging Face's GPT-2, so its state dict maps one to one onto ours (hf_io.py
loads the hub's weights and export_hf.py writes them).
"""

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.utils.rnn import pad_sequence


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2

# -----------------------------------------------------------------------------
# the log-prob of a token


def logprobs_of(logits, targets):
    """
    log softmax(logits)[target] of every row, in float32: logits (..., V), targets (...) ->
    (...). The function every log-prob of the project goes through. Equal to
    log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1) (tests check the
    values and gradients), but computed as
        log p = logit[target] - logsumexp(logits),   d log p / d logits = onehot(target) - softmax
    so that no (..., V) log-softmax is stored and its backward needs no zero-filled gather
    gradient: with GPT-2's 50257-token vocabulary those passes cost more than the language-model
    head's matmul on a CPU. Every exp() is of logit - logsumexp <= 0: huge logits stay finite.
    Test: tests/test_ops.py::test_token_logprobs_values_and_gradients_match_log_softmax
    """
    return _LogprobsOf.apply(logits, targets)


class _LogprobsOf(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, targets):
        x = logits.float()
        lse = torch.logsumexp(x, dim=-1)  # (...)
        target = targets.unsqueeze(-1)    # (..., 1)
        ctx.save_for_backward(logits, target, lse)
        return x.gather(-1, target).squeeze(-1) - lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, target, lse = ctx.saved_tensors
        # grad (...) -> (..., V): grad * (onehot(target) - softmax), in place in one buffer
        out = logits.to(torch.float32, copy=True)
        out.sub_(lse.unsqueeze(-1)).exp_().mul_(-grad.unsqueeze(-1))
        out.scatter_add_(-1, target, grad.unsqueeze(-1))
        return out.to(logits.dtype), None


def head_logprobs(lm_head, h, targets, chunk=0):
    """
    logprobs_of(lm_head(h), targets): hidden states h (..., C), targets (...) -> (...) float32.
    With chunk > 0 (gradient checkpointing), the head and its log-softmax run on `chunk` rows at
    a time under checkpointing, so the (n, V) logits never exist whole: each chunk's are freed
    after its forward and recomputed, one chunk at a time, in the backward (one more LM-head
    matmul in all). With GPT-2's vocabulary the logits of a batch outweigh the blocks' kept
    inputs (8 x 512 positions: 3.1 GB of bf16 logits and their float32 gradient; docs/SCALE.md).
    Test: tests/test_model.py::test_chunked_head_logprobs_equal_the_whole_head
    """
    if not chunk:
        return logprobs_of(lm_head(h), targets)
    flat_h, flat_t = h.reshape(-1, h.size(-1)), targets.reshape(-1)  # (n, C), (n,)
    parts = [torch.utils.checkpoint.checkpoint(lambda a, b: logprobs_of(lm_head(a), b), hc, tc,
                                               use_reentrant=False)
             for hc, tc in zip(flat_h.split(chunk), flat_t.split(chunk))]
    return torch.cat(parts).view(targets.shape)


# -----------------------------------------------------------------------------
# masks and positions


def attention_mask_4d(key_mask, q_len):
    """
    Boolean SDPA mask, True = may attend. key_mask (B, Tk): 1 for real keys, 0 for pads; the
    queries are the last q_len of the Tk positions. Causal AND key-padding, plus every query may
    always see itself: a pad query would otherwise attend to nothing and SDPA returns NaN for it
    (its output is garbage but finite, and no real query ever looks at a pad key).
    Returns (B, 1, q_len, Tk).
    """
    Tk = key_mask.size(1)
    q_pos = torch.arange(Tk - q_len, Tk, device=key_mask.device)[:, None]  # (Tq, 1)
    k_pos = torch.arange(Tk, device=key_mask.device)[None, :]  # (1, Tk)
    causal = k_pos <= q_pos  # (Tq, Tk)
    allowed = causal & key_mask.bool()[:, None, :]  # (B, Tq, Tk)
    allowed = allowed | (k_pos == q_pos)  # the diagonal
    return allowed[:, None]  # (B, 1, Tq, Tk): broadcast over heads


def is_right_padded(attention_mask):
    """True if no row of the (B, T) mask has a real token (nonzero) after a pad (zero)."""
    real = attention_mask != 0
    return bool((real[:, 1:] <= real[:, :-1]).all())


def position_ids_from_mask(attention_mask):
    """Real tokens are numbered 0, 1, 2, ... whatever the padding; pads LEFT of the tokens get 0,
    pads right of them n - 1 (the last real position; nothing real attends to them). (B, T) long."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class KVCache:
    """
    Keys and values of every layer for a whole generation, allocated once:
    k, v (n_layer, B, nh, T_max, hs). `pos` is how many positions are filled; a forward of T
    new tokens writes [pos, pos + T) in every layer, then advance(T) moves the pointer.
    """

    def __init__(self, n_layer, batch_size, n_head, max_len, head_size):
        self.shape = (n_layer, batch_size, n_head, max_len, head_size)
        self.k = self.v = None  # allocated on first use, in the dtype the model computes in
        self.pos = 0

    def update(self, layer, k, v):
        # k, v (B, nh, T, hs) for the new tokens -> all keys/values so far (B, nh, pos + T, hs)
        if self.k is None:
            self.k = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n):
        self.pos += n

# -----------------------------------------------------------------------------
# the network


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        # q, k, v projections for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, attn_mask=None, cache=None, layer=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, T_past + T, hs)
        # no mask: plain causal attention (the fast path); else the boolean mask says it all
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # GPT-2 uses the tanh approximation of GELU ('gelu_new' in HF)
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """The trunk shared by GPT and ScalarModel: embeddings, blocks, final LayerNorm."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        # gradient checkpointing (a training setting, not the architecture): keep only each
        # block's input for the backward and recompute the block's inside there, one block at a
        # time; set by the scripts' grad_checkpoint key
        self.grad_checkpoint = False
        # GPT-2 init: N(0, 0.02) everywhere; the residual projections get 1/sqrt(2 * n_layer)
        # more, since each block adds two of them to the residual stream
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
            elif name.endswith(".weight") and p.dim() == 2:
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name.endswith(".bias") and "ln_" not in name:
                nn.init.zeros_(p)

    def forward(self, idx, attention_mask=None, position_ids=None, cache=None):
        """idx (B, T) -> hidden states after ln_f (B, T, C). See GPT.forward for the masks."""
        B, T = idx.size()
        past = cache.pos if cache is not None else 0
        # given positions without a cache (training, prefill) are checked instead of the length:
        # a shared-prompt row may be longer than block_size, its positions may not
        if (position_ids is None or past > 0) and past + T > self.config.block_size:
            raise ValueError(f"sequence length {past + T} exceeds block_size "
                             f"{self.config.block_size}")
        if past == 0 and idx.numel() > 0 and not torch.compiler.is_compiling():
            top = position_ids.max() if position_ids is not None else idx.new_tensor(0)
            # one host sync for every check: cheap next to the forward
            lo, hi, top = torch.stack([idx.min(), idx.max(), top.to(idx.dtype)]).tolist()
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got "
                                 f"min {lo} max {hi} (wrong tokenizer for this model?)")
            if top >= self.config.block_size:
                raise ValueError(f"position {top} exceeds block_size {self.config.block_size}")
        if position_ids is None:
            if attention_mask is not None and cache is None:
                position_ids = position_ids_from_mask(attention_mask)
            else:
                position_ids = torch.arange(past, past + T, device=idx.device)[None, :]
        if attention_mask is None:
            assert cache is None or past == 0, "decoding with a cache needs the full key mask"
            attn_mask = None  # SDPA's is_causal fast path
        elif attention_mask.dim() == 4:  # (B, 1, T, T) bool, e.g. shared_prompt_mask: as given
            assert position_ids is not None and cache is None, "a 4-D mask needs position_ids"
            attn_mask = attention_mask
        else:
            # with a cache, attention_mask covers all past + new keys (B, past + T)
            attn_mask = attention_mask_4d(attention_mask, T)
        x = self.drop(self.wte(idx) + self.wpe(position_ids))  # (B, T, C)
        # only where a backward will follow: never in generation (cache) or no-grad forwards.
        # Activation memory per block falls from ~20 (B, T, C) tensors to the block's input, for
        # one more forward of each block in the backward; the recompute replays dropout's RNG
        checkpointed = self.grad_checkpoint and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.h):
            if checkpointed:
                x = torch.utils.checkpoint.checkpoint(block, x, attn_mask, None, i,
                                                      use_reentrant=False)
            else:
                x = block(x, attn_mask, cache, i)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # tied input/output embeddings (weight tying, as GPT-2 does)
        self.lm_head.weight = self.transformer.wte.weight

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # the tied matrix counts once

    def hidden_states(self, idx, attention_mask=None, position_ids=None):
        """Final hidden states after ln_f, (B, T, C)."""
        return self.transformer(idx, attention_mask, position_ids)

    # positions of the LM head at a time when checkpointing: with GPT-2's vocabulary a chunk's
    # bf16 logits and their float32 gradient are 512 x 50257 x 6 bytes = 150 MB
    logprob_chunk = 512

    def forward(self, idx, attention_mask=None, position_ids=None, logits_at=None, targets=None):
        """
        idx (B, T) token ids; attention_mask (B, T) 1 = real token, 0 = pad, left or right
        padding; position_ids (B, T), by default counted over real tokens only.
        A (B, 1, T, T) bool attention_mask (True = may attend, with position_ids) is used as
        given: shared_prompt_mask's rows of one prompt and several answers.
        Returns logits (B, T, vocab_size) at every position; pad positions hold garbage.
        logits_at, a (B, T) bool mask, asks for the logits of those positions only, (n, V) in
        row-major order: the LM head (the largest matmul of GPT-2 on short rows) then skips the
        prompt and padding positions whose predictions nothing reads. logits_at may also be a
        pair of (n,) long tensors (rows, positions), positions listed in any order and as often
        as wanted (the last prompt token predicts the first token of every shared-prompt answer).
        A RIGHT-padded batch needs no mask: causal attention never lets a real token see the pads
        after it, and real positions are 0..n-1 either way, so attention_mask=None gives the
        same logits at real positions and keeps SDPA's fast causal kernel.
        targets, the token each returned position predicts ((B, T) or (n,)), asks for their
        log-probs instead of the logits (float32, head_logprobs): with gradient checkpointing
        the LM head then runs a chunk of positions at a time, and the logits are never whole.
        """
        h = self.transformer(idx, attention_mask, position_ids)  # (B, T, C)
        h = h if logits_at is None else h[logits_at]
        if targets is None:
            return self.lm_head(h)
        chunked = self.transformer.grad_checkpoint and torch.is_grad_enabled()
        return head_logprobs(self.lm_head, h, targets, self.logprob_chunk if chunked else 0)

    @classmethod
    def from_pretrained(cls, name_or_path, dropout=0.0):
        """GPT-2 weights from the hub ('gpt2' ... 'gpt2-xl') or a local Hugging Face directory
        (hf_io.from_pretrained)."""
        import hf_io  # hf_io builds on this module
        return hf_io.from_pretrained(name_or_path, dropout, cls)

    @torch.no_grad()
    def generate(self, idx, attention_mask=None, max_new_tokens=32, temperature=1.0, top_k=None,
                 top_p=None, greedy=False, eos_token_id=None, generator=None):
        """
        Continue LEFT-padded prompts idx (B, T0) (attention_mask (B, T0), 1 = real).
        One prefill forward fills the KV cache, then one forward per new token.
        Returns (tokens (B, N) long, mask (B, N) long, logprobs (B, N) float), N <= max_new_tokens:
        mask is 1 up to and including a row's first EOS and 0 after it (those tokens are
        eos_token_id, or 0); logprobs = log_softmax(logits / temperature) at the sampled token,
        from the unfiltered distribution (the one training recomputes), 0 where mask is 0.
        generator: None (the global RNG), a torch.Generator (one stream for the batch), or a list
        of B generators, row i drawing only from its own: then row i's answer does not depend on
        the batch it is in (see sample_next).
        """
        B, T0 = idx.size()
        dev = idx.device
        if T0 + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt length {T0} + max_new_tokens {max_new_tokens} exceeds "
                             f"block_size {self.config.block_size}")
        if temperature <= 0:
            raise ValueError("temperature must be > 0 (use greedy=True for argmax decoding)")
        if attention_mask is None:
            attention_mask = torch.ones_like(idx)
        attention_mask = attention_mask.long()
        if T0 == 0 or not bool(attention_mask[:, -1].all()):
            raise ValueError("generate() needs LEFT-padded prompts with at least one real token "
                             "each: attention_mask[:, -1] must be 1 in every row")
        # the key mask over the whole cache: the prompt's mask, then ones for generated tokens
        # (a finished row keeps running on filler tokens; its outputs are simply thrown away)
        key_mask = torch.ones(B, T0 + max_new_tokens, dtype=torch.long, device=dev)
        key_mask[:, :T0] = attention_mask
        next_pos = attention_mask.sum(-1, keepdim=True)  # (B, 1) position of the first new token
        C = self.config
        cache = KVCache(C.n_layer, B, C.n_head, T0 + max_new_tokens, C.n_embd // C.n_head)
        h = self.transformer(idx, key_mask[:, :T0], position_ids_from_mask(attention_mask),
                             cache)
        logits = self.lm_head(h[:, -1])  # (B, V) prefill: only the last position is needed
        fill = eos_token_id if eos_token_id is not None else 0
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        tokens, masks, logprobs = [], [], []
        for step in range(max_new_tokens):
            logits = logits.float() / temperature  # (B, V)
            tok = sample_next(logits, top_k, top_p, greedy, generator)  # (B,)
            lp = F.log_softmax(logits, dim=-1).gather(-1, tok[:, None]).squeeze(-1)  # (B,)
            tokens.append(torch.where(done, torch.full_like(tok, fill), tok))
            masks.append((~done).long())
            logprobs.append(torch.where(done, torch.zeros_like(lp), lp))
            if eos_token_id is not None:
                done = done | (tok == eos_token_id)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            # decode one token: it attends to the whole cache so far through key_mask
            h = self.transformer(tokens[-1][:, None], key_mask[:, :cache.pos + 1],
                                 next_pos + step, cache)
            logits = self.lm_head(h[:, -1])
        return torch.stack(tokens, 1), torch.stack(masks, 1), torch.stack(logprobs, 1)


def sample_next(logits, top_k=None, top_p=None, greedy=False, generator=None):
    """
    One token per row from logits (B, V) already divided by the temperature: the argmax, or a
    sample of softmax(logits) after top-k / top-p filtering, by inverse CDF: the first token
    whose cumulative probability reaches u * total, u ~ U(0, 1] (a token of probability 0 is
    never chosen). One u per row and step, drawn from `generator` (a torch.Generator, or None
    for the global RNG) or, given a list of B generators, row i's u from generator i alone: the
    noise a row sees then depends on nothing but its own generator, whatever the batch size and
    whenever the other rows end. Returns (B,) long.
    """
    if greedy:
        return logits.argmax(-1)
    probs = F.softmax(top_p_filter(top_k_filter(logits, top_k), top_p), dim=-1)  # (B, V)
    if isinstance(generator, (list, tuple)):
        u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generator])
    elif generator is not None:
        u = torch.rand(logits.size(0), generator=generator, device=generator.device)
    else:
        u = torch.rand(logits.size(0))
    cdf = probs.cumsum(-1)  # (B, V)
    x = (1.0 - u.to(cdf.device))[:, None] * cdf[:, -1:]  # (B, 1) in (0, total]
    return (cdf < x).sum(-1).clamp(max=logits.size(-1) - 1)


def row_generators(seed, rows, device="cpu"):
    """One torch.Generator per row key (an int or a tuple of ints, e.g. (prompt i, sample j)),
    seeded from (seed, key) alone: the noise of a row is fixed by its key, not by its batch."""
    gens = []
    for key in rows:
        key = key if isinstance(key, tuple) else (key,)
        mixed = seed
        for k in key:  # a fixed integer mix (Python's hash of ints is not salted, but be plain)
            mixed = (mixed * 1_000_003 + k + 1) % (2**63 - 1)
        gens.append(torch.Generator(device=device).manual_seed(mixed))
    return gens


def top_k_filter(logits, k):
    """Keep the k largest logits (ties at the boundary kept), -inf elsewhere. (..., V)
    k None or 0: no filtering."""
    if not k or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p):
    """
    Nucleus sampling (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    probability sums to >= p; the top token is always kept. -inf elsewhere. (..., V)
    """
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    # drop a token when the tokens ranked above it already reach p
    drop = (probs.cumsum(-1) - probs) >= p
    drop[..., 0] = False
    drop = drop.scatter(-1, order, drop)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))

# -----------------------------------------------------------------------------
# reward model / critic


class ScalarModel(nn.Module):
    """
    The GPT trunk (same `transformer.*` names, so a policy's trunk loads directly) and a linear
    head to one number per position. As a reward model the score is read at the last real token;
    as a PPO critic values() gives one per position.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.head = nn.Linear(config.n_embd, 1)
        # N(0, 1/sqrt(d+1)) as in the OpenAI lm-human-preferences reward head
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(config.n_embd + 1))
        nn.init.zeros_(self.head.bias)
        # subtracted from scores so that reference responses score 0 on average (set after RM
        # training); a buffer, so it is saved in the state dict
        self.register_buffer("reward_bias", torch.zeros(()))

    @classmethod
    def from_gpt(cls, gpt):
        """A fresh head on a copy of gpt's trunk (e.g. RM from the SFT policy)."""
        model = cls(gpt.config)
        model.transformer.load_state_dict(gpt.transformer.state_dict())
        return model.to(gpt.lm_head.weight.device, gpt.lm_head.weight.dtype)

    def values(self, idx, attention_mask=None, position_ids=None):
        """
        Head at every position minus reward_bias, (B, T): the PPO critic. At each row's last real
        token it equals forward(), so a critic copied from the reward model starts centred on the
        very scores PPO pays (without the bias its values would all sit reward_bias too high).
        """
        h = self.transformer(idx, attention_mask, position_ids)  # (B, T, C)
        return self.head(h).squeeze(-1) - self.reward_bias

    def forward(self, idx, attention_mask=None, position_ids=None, score_at=None):
        """
        Scores (B,) at each row's last real token (left or right padding), minus reward_bias.
        score_at, a pair of (n,) long tensors (rows, positions), reads the scores there instead,
        (n,): the answers' last tokens in shared-prompt rows (a 4-D attention_mask, GPT.forward).
        A right-padded batch (every row's 1s before its 0s, as loader.collate builds them) runs the
        trunk without the mask, as GPT.forward explains: the same hidden states at real tokens,
        and SDPA keeps its fast causal kernel. The mask still says where each row ends.
        """
        trunk_mask = attention_mask
        if attention_mask is not None and attention_mask.dim() == 2 and position_ids is None \
                and is_right_padded(attention_mask):
            trunk_mask = None
        h = self.transformer(idx, trunk_mask, position_ids)  # (B, T, C)
        if score_at is not None:
            return self.head(h[score_at]).squeeze(-1) - self.reward_bias  # (n,)
        B, T, _ = h.size()
        if attention_mask is None:
            last = torch.full((B,), T - 1, dtype=torch.long, device=idx.device)
        else:
            # index of the last 1 in each row: the largest position index where mask is 1
            pos = torch.arange(T, device=idx.device)[None, :]
            last = (pos * (attention_mask != 0)).argmax(-1)  # (B,)
        h_last = h[torch.arange(B, device=idx.device), last]  # (B, C)
        return self.head(h_last).squeeze(-1) - self.reward_bias

    @torch.no_grad()
    def score(self, idx, attention_mask, batch_size=None):
        """
        Scores (B,) float of token ids the caller already has, e.g. PPO's prompt + sampled
        response, so the reward model sees exactly the ids the policy produced. idx,
        attention_mask (B, T), left or right padding; the score is read at each row's last
        mask == 1 token and reward_bias is subtracted; batch_size rows per forward (None: all),
        rows of similar lengths together, each forward without the columns that are padding in
        all of its rows (the same scores, for fewer positions: a PPO rollout's rows are padded to
        its longest prompt and its longest answer). Runs in eval mode (no dropout), then restores
        the model's mode.
        """
        was_training = self.training
        self.eval()
        B = idx.size(0)
        order = attention_mask.sum(1).argsort(stable=True)  # (B,)
        out = idx.new_zeros(B, dtype=torch.float)
        for rows in order.split(batch_size or max(B, 1)):
            real = attention_mask[rows].any(0).nonzero()  # columns with a real token
            lo, hi = torch.stack([real.min(), real.max() + 1]).tolist() if len(real) else \
                (0, idx.size(1))
            out[rows] = self(idx[rows, lo:hi], attention_mask[rows, lo:hi]).float()
        self.train(was_training)
        return out

    def score_rows(self, rows, pad_id, batch_size, autocast=None):
        """Scores (N,) float on the CPU of token-id lists (prompt + response each), right-padded
        with pad_id in consecutive chunks of batch_size rows (in the order given)."""
        device, out = self.head.weight.device, []
        for k in range(0, len(rows), batch_size):
            chunk = [torch.tensor(r, dtype=torch.long) for r in rows[k:k + batch_size]]
            idx = pad_sequence(chunk, batch_first=True, padding_value=pad_id)  # (B, T)
            lengths = torch.tensor([len(r) for r in chunk])
            attn = (torch.arange(idx.size(1))[None, :] < lengths[:, None]).long()  # (B, T)
            with autocast or nullcontext():
                out.append(self.score(idx.to(device), attn.to(device)).cpu())
        return torch.cat(out) if out else torch.zeros(0)


class ScalarEnsemble(nn.Module):
    """
    Several reward models read as one (Coste et al. 2023): member_scores gives each member's
    score (K, B), score their aggregate (B,) by `aggregate`, a function (K, B) -> (B,) such as
    train_reward_model.aggregate_rewards. The members share one vocabulary and block_size
    (config is the first member's); each is centred on the same reference answers.
    """

    def __init__(self, members, aggregate):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.aggregate = aggregate
        self.config = members[0].config

    @torch.no_grad()
    def member_scores(self, idx, attention_mask, batch_size=None):
        """(K, B) float: every member's ScalarModel.score of the same ids."""
        return torch.stack([m.score(idx, attention_mask, batch_size) for m in self.members])

    @torch.no_grad()
    def score(self, idx, attention_mask, batch_size=None):
        """(B,) float: the members' scores, aggregated."""
        return self.aggregate(self.member_scores(idx, attention_mask, batch_size))

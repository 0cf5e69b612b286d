import os
import sys

import torch

# the scripts are flat top-level modules: make them importable from the tests
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# tiny models gain nothing from threads (and on a shared 2-core machine two threads per process
# can be many times slower than one); subprocess tests set OMP_NUM_THREADS themselves
torch.set_num_threads(1)


def adam_noise_tolerance(lr, steps, betas=(0.9, 0.95)):
    """
    How far apart two runs' weights may be after `steps` Adam updates when the runs differ only
    in float rounding (another summation order: micro-batches, ranks, a shared-prompt layout, or
    another CPU). Adam normalises each coordinate's gradient, so noise in a near-zero gradient
    becomes a step of up to lr * max(1, (1 - beta1) / sqrt(1 - beta2)) (Kingma & Ba 2015,
    sec. 2.1), either way in each run: losses agree to float precision, weights only to this.
    """
    b1, b2 = betas
    return 2 * steps * lr * max(1.0, (1 - b1) / (1 - b2) ** 0.5)


def assert_weights_within_adam_noise(a, b, lr, steps, betas=(0.9, 0.95), skip=()):
    """Two state dicts agree to adam_noise_tolerance in every trained tensor (skip: keys that
    are no weights Adam steps, e.g. a buffer computed from the weights)."""
    assert a.keys() == b.keys()
    tol = adam_noise_tolerance(lr, steps, betas)
    for k in a.keys() - set(skip):
        diff = (a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0
        assert diff <= tol, f"{k}: weights differ by {diff:.3g} > {tol:.3g} (lr {lr}, {steps} steps)"

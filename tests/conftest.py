import os
import sys

import torch

# the scripts are flat top-level modules: make them importable from the tests
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# tiny models gain nothing from threads (and on a shared 2-core machine two threads per process
# can be many times slower than one); subprocess tests set OMP_NUM_THREADS themselves
torch.set_num_threads(1)

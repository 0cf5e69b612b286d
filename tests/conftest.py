import os
import sys

import torch

# the scripts are flat top-level modules: make them importable from the tests
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# tiny models gain nothing from many threads, and CI machines have two cores
torch.set_num_threads(min(2, torch.get_num_threads()))

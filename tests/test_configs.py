"""Every config file names only keys its script knows; the toy configs repeat the defaults."""

import glob
import os
import runpy

import pytest

import train_dpo
import train_kto
import train_ppo
import train_reward_model
import train_sft

SCRIPTS = {"sft": train_sft, "rm": train_reward_model, "ppo": train_ppo, "dpo": train_dpo,
           "kto": train_kto}
SCRIPT_OF = {**SCRIPTS, "spin": train_dpo,  # config/spin_toy.py: SPIN is DPO on its pairs
             "judge": train_sft,  # config/judge_toy.py: RLAIF's judge is SFT on its format
             "rs": train_sft}  # config/rs_toy.py: rejection sampling's SFT on the kept answers
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "config", "*.py")))


def settings(path):
    return {k: v for k, v in runpy.run_path(path).items() if not k.startswith("_")}


@pytest.mark.unit
@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_keys_and_types_match_the_script(path):
    script = SCRIPT_OF[os.path.basename(path).split("_")[0]]
    for key, value in settings(path).items():
        assert key in script.DEFAULTS, f"{path}: unknown key {key}"
        assert type(value) is type(script.DEFAULTS[key]) or (
            isinstance(value, (int, float)) and isinstance(script.DEFAULTS[key], float)), key


@pytest.mark.unit
@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_toy_config_equals_the_defaults(stage):
    cfg = settings(os.path.join(ROOT, "config", f"{stage}_toy.py"))
    differ = {k: (v, SCRIPTS[stage].DEFAULTS[k]) for k, v in cfg.items()
              if SCRIPTS[stage].DEFAULTS[k] != v}
    assert not differ, differ


@pytest.mark.unit
def test_kto_shares_dpo_settings_but_its_loss_and_data():
    # train_kto.py runs train_dpo.py's loop: the keys both have agree, but for its own files
    differ = {k for k, v in train_kto.DEFAULTS.items()
              if k in train_dpo.DEFAULTS and train_dpo.DEFAULTS[k] != v}
    assert differ == {"out_dir", "train_data", "val_data"}, differ

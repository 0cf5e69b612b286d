"""
The bandit's true reward, as a programmatic reward function for PPO and GRPO:

    python train_ppo.py ... --reward_fn=data/bandit/reward.py:reward

Eight one-letter answers with known rewards. Anything else (an empty answer, two letters, a
lower-case letter, an answer cut off before its EOS) is no answer and gets R_OFF, below every
real one, so that the trainers have no reason to leave the answer set. The file is standalone
(the trainers load it by path), and data/bandit/prepare.py imports its tables.
"""

ANSWERS = ("A", "B", "C", "D", "E", "F", "G", "H")
# r(y). The best answer, H, is the RAREST under the SFT policy (see prepare.PI_0): every method
# has to move mass onto an answer the reference hardly says.
REWARDS = (0.0, 0.8, 0.25, 1.0, -0.25, 0.65, 0.1, 1.25)
R_OFF = -1.0

TABLE = dict(zip(ANSWERS, REWARDS))


def reward(prompt, response):
    """r(response) for one of ANSWERS, else R_OFF. The prompt is ignored: there is one."""
    return TABLE.get(response, R_OFF)

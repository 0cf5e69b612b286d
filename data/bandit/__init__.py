"""The bandit: one prompt, eight one-letter answers, every trainer's fixed point in closed form."""

"""The toy world: a seeded generator of questions, answers and preferences, and its judge."""

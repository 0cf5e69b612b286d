"""
Annotators under data/toy/label.py's contract, to copy and change:

    annotate(prompt: str, answers: list[str]) -> list[int]   # one rank per answer, lower = better

    python data/toy/label.py --annotator=data/toy/annotators_example.py:rules --prefix=rules
    python data/toy/label.py --annotator=data/toy/annotators_example.py:person --max_prompts=20 \
        --num_val_prompts=0 --k=3 --prefix=person          # you rank 20 x 3 answers yourself

A call to a language-model server fits the same contract: send the prompt and the numbered
answers, parse the ranks it returns, and raise (one line stops the run) when it returns none.
None of these reads the gold judge: they see only the texts, as a person would.
"""

RUDE = ("Duh", "Ugh", "Obviously", "Whatever", "Dumb question")
HEDGES = ("um", "hmm", "I think", "I guess", "you know", "Sort of")
CLOSINGS = ("Hope that helps!", "Glad to help!", "Happy to help!")


def rules(prompt, answers):
    """
    A rule-based labeller that knows manners but no facts: a point for a friendly closing, a
    point lost for each rude word and for each hedge, and the shorter answer first among equals.
    It cannot tell a right answer from a wrong one, nor a refusal's worth: its labels teach
    tone, as a rushed annotator's would.
    """
    def points(a):
        low = a.lower()
        return (sum(a.endswith(c) for c in CLOSINGS) - sum(w.lower() in low for w in RUDE)
                - sum(h.lower() in low for h in HEDGES))
    order = sorted(range(len(answers)), key=lambda i: (-points(answers[i]), len(answers[i])))
    ranks = [0] * len(answers)
    for r, i in enumerate(order):
        ranks[i] = r  # 0 = best; no ties (length breaks them)
    return ranks


def person(prompt, answers):
    """You are the annotator: the answers are printed, you type their order, best first
    ('2 1 3'); an empty line ties them all (the prompt then holds no comparison)."""
    print(f"\n{prompt}")
    for i, a in enumerate(answers, 1):
        print(f"  {i}. {a}")
    while True:
        line = input("best first (e.g. '2 1 3'): ").split()
        if not line:
            return [0] * len(answers)
        if len(line) == len(answers) and set(line) == {str(i) for i in range(1, len(answers) + 1)}:
            ranks = [0] * len(answers)
            for r, i in enumerate(line):
                ranks[int(i) - 1] = r
            return ranks
        print(f"  type each of 1..{len(answers)} once")

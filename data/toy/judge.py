"""
The toy world's gold reward: a programmatic judge that plays the human labeller.

    gold_reward(prompt, response) -> float in [MIN_REWARD, MAX_REWARD] = [-5.5, 3.0]

It parses the prompt alone (no metadata) to find the question's subject and its right answer,
then adds four scores a person would care about (see data/toy/README.md for examples):

    correct   +1.5 states the right answer (and no other candidate answer)
              -1.5 states a wrong candidate answer (another colour, sound, word or number)
               0   states no answer
    on-topic  +0.5 names the subject (the object, the animal, the word, both numbers)
               0   does not name it but does give some candidate answer
              -1.5 neither: off-topic
    polite    +0.5 contains a polite phrase ("Hope that helps!", "Glad to help!", ...)
              -1.0 contains a rude phrase ("duh", "dumb question", "whatever", ...), which
                   overrides any polite phrase
               0   neither
    concise   +0.5, minus 0.05 per character beyond 50, minus 0.5 per filler phrase
                   ("um", "well", "I guess", ...), floored at -1.5

The maximum 3.0 is reached by a short polite answer that names the subject and the right answer,
e.g. "A banana is yellow. Hope that helps!". Matching is on lower-cased whole words; numbers must
be written as digits.
"""

import re

# -----------------------------------------------------------------------------
# the world: four families of questions over a small vocabulary. Subjects are distinct across
# families, so a prompt's family follows from the subject it names.

COLORS = {  # object -> its colour
    "banana": "yellow", "lemon": "yellow", "tomato": "red", "cherry": "red", "carrot": "orange",
    "pumpkin": "orange", "plum": "purple", "lime": "green", "crow": "black", "swan": "white",
    "blueberry": "blue", "flamingo": "pink",
}
SOUNDS = {  # animal -> the sound it makes
    "cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "pig": "oink",
    "owl": "hoot", "horse": "neigh", "lion": "roar", "snake": "hiss", "bee": "buzz", "frog": "ribbit",
}
_PAIRS = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("wet", "dry"), ("full", "empty"),
          ("loud", "quiet"), ("open", "closed"), ("early", "late")]
OPPOSITES = {**dict(_PAIRS), **{b: a for a, b in _PAIRS}}  # word -> its opposite, both ways
NUMBERS = range(1, 5)  # "What is a plus b?" for a, b in 1..4
PLURALS = {"cherry": "cherries", "blueberry": "blueberries", "tomato": "tomatoes"}

assert not (set(COLORS) & set(SOUNDS) or set(COLORS) & set(OPPOSITES) or set(SOUNDS) & set(OPPOSITES))

# phrases, in the normalised form the judge compares (lower case, words joined by single spaces)
POLITE = ("hope that helps", "hope this helps", "glad to help", "happy to help", "you re welcome",
          "thank you", "thanks for asking")
RUDE = ("duh", "ugh", "obviously", "whatever", "dumb", "stupid", "idiot", "shut up", "go away",
        "stop asking")
FILLERS = ("um", "uh", "hmm", "well", "let me think", "basically", "you know", "i think",
           "i guess", "anyway", "sort of", "kind of")

# the score's parts
W_CORRECT, W_WRONG = 1.5, -1.5
W_SUBJECT, W_OFF_TOPIC = 0.5, -1.5
W_POLITE, W_RUDE = 0.5, -1.0
W_CONCISE, FREE_CHARS, PER_CHAR, PER_FILLER, MIN_CONCISE = 0.5, 50, 0.05, 0.5, -1.5
MAX_REWARD = W_CORRECT + W_SUBJECT + W_POLITE + W_CONCISE  # 3.0
MIN_REWARD = W_WRONG + W_OFF_TOPIC + W_RUDE + MIN_CONCISE  # -5.5 (not all reachable at once)

# -----------------------------------------------------------------------------


def parse_prompt(prompt):
    """
    (family, subject words, right answer, candidate answers) of a toy-world question, from its
    text alone. family is 'color' | 'sound' | 'opposite' | 'add'. Raises ValueError otherwise.
    """
    text = prompt.lower()
    m = re.search(r"\b(\d+)\s*(?:plus|\+|and)\s*(\d+)\b", text)
    if m:
        a, b = m.group(1), m.group(2)
        # every number is a candidate answer; the operands are the subject, not wrong answers
        return "add", {a, b}, str(int(a) + int(b)), None
    for w in re.findall(r"[a-z]+", text):
        if w in COLORS:
            return "color", {w, PLURALS.get(w, w + "s")}, COLORS[w], set(COLORS.values())
        if w in SOUNDS:
            return "sound", {w, PLURALS.get(w, w + "s")}, SOUNDS[w], set(SOUNDS.values())
        if w in OPPOSITES:
            return "opposite", {w}, OPPOSITES[w], set(OPPOSITES)
    raise ValueError(f"not a toy-world prompt (no known object, animal, word or sum): {prompt!r}")


def _count(norm, phrase):
    """Occurrences of a whole-word phrase in ' '-joined normalised text."""
    return len(re.findall(r"(?<![a-z0-9])" + re.escape(phrase) + r"(?![a-z0-9])", norm))


def score_parts(prompt, response):
    """The four parts of the gold reward, as a dict (gold_reward is their sum)."""
    family, subject, answer, candidates = parse_prompt(prompt)
    words = re.findall(r"[a-z]+|\d+", response.lower())
    norm = " ".join(words)
    if family == "add":
        numbers = {w for w in words if w.isdigit()}
        right = answer in numbers
        wrong = bool(numbers - subject - {answer})
        named = subject <= numbers
        any_answer = bool(numbers)
    else:
        present = set(words)
        right = answer in present
        wrong = bool((present & candidates) - subject - {answer})
        named = bool(present & subject)
        any_answer = bool(present & (candidates - subject))

    correct = W_WRONG if wrong else (W_CORRECT if right else 0.0)
    on_topic = W_SUBJECT if named else (0.0 if any_answer else W_OFF_TOPIC)
    if any(_count(norm, p) for p in RUDE):
        polite = W_RUDE
    else:
        polite = W_POLITE if any(_count(norm, p) for p in POLITE) else 0.0
    n_fillers = sum(_count(norm, p) for p in FILLERS)
    extra_chars = max(0, len(response.strip()) - FREE_CHARS)
    concise = max(MIN_CONCISE, W_CONCISE - PER_CHAR * extra_chars - PER_FILLER * n_fillers)
    return dict(correct=correct, on_topic=on_topic, polite=polite, concise=concise)


def gold_reward(prompt, response):
    """The gold reward of one answer: correct + on-topic + polite + concise, at most 3.0."""
    return round(sum(score_parts(prompt, response).values()), 6)


if __name__ == "__main__":
    p = "What color is a banana?"
    for r in ["A banana is yellow. Hope that helps!", "A banana is yellow. Duh.",
              "Well, um, a banana is yellow. I guess, anyway.", "A banana is red. Hope that helps!",
              "I like turtles. Hope that helps!"]:
        print(f"{gold_reward(p, r):+.2f}  {r!r}  {score_parts(p, r)}")

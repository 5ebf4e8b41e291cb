"""User reward files for the evaluation tests: rewards whose pass@k is known
by hand, whatever the tiny random model writes."""


def always_one(completion: str, **fields) -> float:
    return 1.0


def even_answer(completion: str, *, answer: str, **fields) -> float:
    """1 for every sample of a prompt whose reference answer is even: each
    prompt is all right or all wrong, so pass@k = the share of even answers."""
    return 1.0 if int(answer) % 2 == 0 else 0.0

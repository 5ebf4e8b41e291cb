"""A user reward file for the algorithm loop tests (DAPO's group filter)."""


def odd_varies(completion: str, *, answer: str, **fields) -> float:
    """0 for every sample of a prompt with an even reference answer (a uniform
    group, which dynamic sampling must drop); for odd answers, the share of
    distinct characters, which varies between the tiny model's samples."""
    return 0.0 if int(answer) % 2 == 0 else len(set(completion)) / 50.0

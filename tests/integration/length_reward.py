"""A user reward file, loaded by path in the integration tests.

The tiny random model never answers arithmetic, so tests reward something it
does vary on: how many distinct characters it wrote.
"""


def distinct_chars(completion: str, **fields) -> float:
    return len(set(completion)) / 50.0

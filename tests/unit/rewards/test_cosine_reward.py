"""`cosine`: the offline encoder, batching, caching, and references."""

import math

import pytest

from rlft.rewards import cosine as mod


def test_scores_rank_paraphrase_above_unrelated_and_match_a_loop():
    fields = [{"answer": "The cat is sleeping on the sofa."}] * 3
    texts = ["A cat sleeps on the couch.", "Interest rates rose in March.", "ok"]
    got = mod.cosine(texts, prompts=[""] * 3, fields=fields)
    assert got[0] > 0.6 and got[1] < 0.3
    enc = mod.encoder()
    for text, s in zip(texts, got):  # loop reference: one pair at a time, by hand
        a, b = enc.encode([text, fields[0]["answer"]])
        want = float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))
        assert s == pytest.approx(want, abs=1e-4)


def test_encoder_is_loaded_once_per_process():
    assert mod.encoder() is mod.encoder()


def test_reference_choice_and_missing_reference():
    fields = [{"demonstration": "hello there"}, {}, {"answer": "x", "gold": "hello there"}]
    got = mod.cosine(["hello there"] * 3, prompts=[""] * 3, fields=fields)
    assert got[0] == pytest.approx(1.0, abs=1e-4) and got[1] is None
    got = mod.cosine(["hello there"], prompts=[""], fields=fields[2:], reference="gold")
    assert got[0] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(TypeError, match="must be text"):
        mod.cosine(["x"], prompts=[""], fields=[{"answer": 3}])


def test_unicode_and_long_text():
    got = mod.cosine(["Ünïcödé ✓ 答案", "word " * 200_000], prompts=["", ""],
                     fields=[{"answer": "Ünïcödé ✓ 答案"}, {"answer": "word"}])
    assert got[0] == pytest.approx(1.0, abs=1e-4) and -1.0 <= got[1] <= 1.0

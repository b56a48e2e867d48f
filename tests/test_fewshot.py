"""The few-shot rule (geofm.fewshot) on vectors made for the purpose: examples parsed, one positive is
cosine, and the background keeps a classifier near the positives."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from geofm import fewshot
from geofm.errors import InputError


def test_examples_parse_with_optional_grid() -> None:
    assert fewshot.parse_example("12_25@2023-06-01") == fewshot.Example("12_25", date(2023, 6, 1))
    assert fewshot.parse_example(" 33twl/3_4@2022-01-10 ") == fewshot.Example("3_4", date(2022, 1, 10), "33TWL")
    assert str(fewshot.Example("3_4", date(2022, 1, 10), "33TWL")) == "33TWL/3_4@2022-01-10"
    for bad in ("12_25", "12-25@2023-06-01", "12_25@2023-13-01", "a/b/12_25@2023-06-01"):
        with pytest.raises(InputError, match="example"):
            fewshot.parse_example(bad)


def test_one_positive_is_cosine_similarity() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8))
    scorer = fewshot.fit_scorer(x[:1])
    assert scorer.method == fewshot.COSINE
    expected = (x @ x[0]) / (np.linalg.norm(x, axis=1) * np.linalg.norm(x[0]))
    np.testing.assert_allclose(scorer.score(x), expected)


def _clusters(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Target chips around (1, 1, 0), 'not this' chips around (0, 1, 0), and a third kind around
    (1, 0, 0): further than the target along the target-minus-negative direction."""
    centres = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, -0.2, 0.0]])
    labels = np.repeat([0, 1, 2], 40)
    x = centres[labels] + rng.normal(0, 0.08, (len(labels), 3))
    return x, labels


@pytest.mark.parametrize("method", ["svm", "logreg"])  # the centroid difference does not (bench_fewshot)
def test_the_background_keeps_the_classifier_near_the_positives(method: str) -> None:
    rng = np.random.default_rng(1)
    x, labels = _clusters(rng)
    pos, neg = x[labels == 0][:3], x[labels == 1][:3]
    background = x[fewshot.background_sample(len(x), seed=0, size=60)]
    with_bg = fewshot.fit_scorer(pos, neg, method, background)
    top = np.argsort(-with_bg.score(x))[:30]
    assert np.mean(labels[top] == 0) >= 0.9
    alone = fewshot.fit_scorer(pos, neg, method)  # fitted on the examples alone the third kind outranks them
    assert np.mean(labels[np.argsort(-alone.score(x))[:30]] == 0) < 0.6


def test_scorer_refuses_what_it_cannot_fit() -> None:
    x = np.eye(4)
    with pytest.raises(InputError, match="positive"):
        fewshot.fit_scorer(np.zeros((0, 4)))
    with pytest.raises(InputError, match="method"):
        fewshot.fit_scorer(x[:2], x[2:], "knn")
    with pytest.raises(InputError, match="negatives or a background"):
        fewshot.fit_scorer(x[:2])


def test_precision_at_k_and_best_patch() -> None:
    assert fewshot.precision_at_k(["a", "b", "c", "d"], {"a", "c"}, 2) == 0.5
    heat = np.array([[0.1, np.nan], [0.9, 0.3]])
    assert fewshot.best_patch(heat) == [1, 0] and fewshot.best_patch(np.full((2, 2), np.nan)) is None

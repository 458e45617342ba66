"""The fixed test split and the label-fraction subsets of the evaluation protocol.

``test_split`` assigns images to test by hashing, so the split depends only on image
content (sha256) and class, never on file order, run or machine. ``label_subset`` draws
the labelled training subsets of a label-efficiency sweep; subsets for one seed are
nested across fractions so a curve only ever adds labels as the fraction grows.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

DEFAULT_SALT = "dlvm-test-split"


def _round_half_up(x: float) -> int:
    # Python's round() is banker's rounding (round(2.5) == 2); half-up is easier to predict.
    return int(np.floor(x + 0.5))


def test_split(
    image_sha256s: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    test_fraction: float = 0.25,
    salt: str = DEFAULT_SALT,
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, hash-assigned train/test split.

    Within each class the images are ordered by ``sha256(salt + image_sha256)`` and the
    first ``round(test_fraction * n_class)`` go to test (at least 1 and at most
    ``n_class - 1`` when the class has two or more images; a singleton class stays in
    train). Returns sorted index arrays ``(train_idx, test_idx)`` into the inputs.

    The result is independent of input order: the same image lands on the same side as
    long as its class's size doesn't change.
    """
    shas = list(image_sha256s)
    y = np.asarray(labels)
    if len(shas) != len(y):
        raise ValueError(f"{len(shas)} image hashes but {len(y)} labels")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    keys = [hashlib.sha256((salt + s).encode()).hexdigest() for s in shas]
    test: list[int] = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls).tolist()
        # The image sha breaks ties of the (identical) salted key for duplicate images,
        # then nothing is left that depends on input order.
        members.sort(key=lambda i: (keys[i], shas[i]))
        n = len(members)
        k = _round_half_up(test_fraction * n)
        if n >= 2:
            k = min(max(k, 1), n - 1) if test_fraction > 0 else 0
        else:
            k = 0
        test.extend(members[:k])
    test_idx = np.array(sorted(test), dtype=np.int64)
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask).astype(np.int64), test_idx


# pytest collects module-level functions named test_* from imported modules; this is
# not a test.
test_split.__test__ = False  # type: ignore[attr-defined]


def label_subset(
    train_idx: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    fraction: float,
    seed: int,
) -> np.ndarray:
    """A stratified random subset of the train pool: ``round(fraction * n_class)`` per class, at least 1.

    ``labels`` is indexed by the values of ``train_idx`` (the full label array of the
    dataset). Each class's pool is shuffled by a generator seeded with ``(seed, class)``
    and its first k members are taken, so for one seed the subsets are nested across
    fractions (5 % ⊂ 10 % ⊂ … ⊂ 100 %), and fraction 1.0 returns the whole pool. Returns
    sorted dataset indices.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    pool = np.unique(np.asarray(train_idx, dtype=np.int64))  # sorted: input order can't matter
    y = np.asarray(labels)
    pool_y = y[pool]
    chosen: list[np.ndarray] = []
    for cls in np.unique(pool_y):
        members = pool[pool_y == cls]
        rng = np.random.default_rng([int(seed), int(cls)])
        order = rng.permutation(len(members))
        k = len(members) if fraction >= 1.0 else min(len(members), max(1, _round_half_up(fraction * len(members))))
        chosen.append(members[order[:k]])
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)

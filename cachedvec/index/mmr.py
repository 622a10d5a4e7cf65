"""Maximal marginal relevance: pick results that are relevant but not alike.

Each step takes the candidate maximising
``lambda_mult * sim(query, c) - (1 - lambda_mult) * max(sim(c, chosen))``
with cosine similarity, as LangChain does, whatever the index metric: MMR
is about direction, not length. One matrix product gives every pairwise
similarity up front, so the loop itself is a few numpy calls per pick.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def mmr_select(
    query: npt.NDArray[np.float32],
    candidates: npt.NDArray[np.float32],
    k: int,
    lambda_mult: float,
) -> list[int]:
    """Positions in ``candidates`` of the ``k`` picks, in pick order."""
    if len(candidates) == 0 or k <= 0:
        return []
    unit = _unit_rows(candidates)
    relevance = unit @ _unit_rows(query.reshape(1, -1))[0]
    similarity = unit @ unit.T
    first = int(np.argmax(relevance))
    chosen = [first]
    closest = similarity[first].copy()
    for _ in range(min(k, len(candidates)) - 1):
        score = lambda_mult * relevance - (1.0 - lambda_mult) * closest
        score[chosen] = -np.inf
        pick = int(np.argmax(score))
        chosen.append(pick)
        np.maximum(closest, similarity[pick], out=closest)
    return chosen


def _unit_rows(matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.floating[Any]]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)

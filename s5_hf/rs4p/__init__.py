"""RS4P: selecting unlabeled pretraining images by low foreground entropy and cluster quotas (the paper's RS4P-1M construction).

`run_selection` runs the whole pipeline (see `pipeline.py`); the steps are usable on their own:
`score_logits`/`foreground_entropy` (entropy.py), `spherical_kmeans`/`assign_to_prototypes` (kmeans.py),
`largest_remainder_quotas`/`entropy_order`/`quota_walk`/`select_by_quota` (selection.py), `open_pool`
(pool.py) and `ChunkScorer`/`ScoreStore` (scoring.py).
"""

from .entropy import PredictionScores, foreground_entropy, score_logits
from .kmeans import KMeansResult, assign_to_prototypes, l2_normalize, spherical_kmeans
from .pipeline import SelectionArguments, SelectionOutcome, run_selection
from .pool import Chunk, ImagePool, RawImage, open_pool
from .scoring import ChunkScorer, ScoreStore, ScoringOptions
from .selection import QuotaSelection, entropy_order, largest_remainder_quotas, quota_walk, select_by_quota

__all__ = [
    "Chunk",
    "ChunkScorer",
    "ImagePool",
    "KMeansResult",
    "PredictionScores",
    "QuotaSelection",
    "RawImage",
    "ScoreStore",
    "ScoringOptions",
    "SelectionArguments",
    "SelectionOutcome",
    "assign_to_prototypes",
    "entropy_order",
    "foreground_entropy",
    "l2_normalize",
    "largest_remainder_quotas",
    "open_pool",
    "quota_walk",
    "run_selection",
    "score_logits",
    "select_by_quota",
    "spherical_kmeans",
]

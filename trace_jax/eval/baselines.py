"""Series -> series baselines: similarity matrices (higher = more alike) between windows.

Each takes (N, C, T) series with an (N, C, T) observed mask and returns an (N, N) float matrix.
Every channel is z-normalised over its observed points first (so level and scale do not
dominate, as is usual for these methods); unobserved points become 0, the channel's mean.
DTW and SAX-VSM come from established libraries (dtaidistance, pyts; the `eval` extra:
`pip install -e '.[eval]'`).
"""

from __future__ import annotations

import numpy as np


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"the {module} baseline needs the eval extra: pip install -e '.[eval]'"
        ) from None


def z_normalise(series, observed) -> np.ndarray:
    """Per (window, channel) z-scores over observed points; 0 elsewhere; float64."""
    x = np.where(observed, series, 0.0).astype(np.float64)
    n = np.maximum(observed.sum(-1, keepdims=True), 1)
    mean = x.sum(-1, keepdims=True) / n
    var = (np.where(observed, x - mean, 0.0) ** 2).sum(-1, keepdims=True) / n
    return np.where(observed, (x - mean) / np.sqrt(np.maximum(var, 1e-12)), 0.0)


def random_similarity(n_queries: int, n_candidates: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n_queries, n_candidates))


def euclidean_similarity(series, observed) -> np.ndarray:
    """Minus the Euclidean distance between z-normalised windows (all channels, all steps)."""
    z = z_normalise(series, observed).reshape(len(series), -1)
    sq = (z**2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    return -np.sqrt(d2)


def dtw_similarity(series, observed, window_fraction: float = 0.1) -> np.ndarray:
    """Minus the multivariate DTW distance (dtaidistance, C, parallel) between z-normalised
    windows, with a Sakoe-Chiba band of `window_fraction` of the length."""
    _require("dtaidistance")
    from dtaidistance import dtw_ndim  # pylint: disable=g-import-not-at-top

    z = np.ascontiguousarray(z_normalise(series, observed).transpose(0, 2, 1))  # (N, T, C)
    window = max(1, int(round(window_fraction * z.shape[1])))
    d = dtw_ndim.distance_matrix_fast(z, window=window, parallel=True)
    d = np.minimum(d, d.T)  # dtaidistance fills one triangle, the rest is inf
    np.fill_diagonal(d, 0.0)
    return -d


def sax_vsm_similarity(
    series, observed, window_size: int = 12, word_size: int = 4, n_bins: int = 4
) -> np.ndarray:
    """Cosine similarity of TF-IDF vectors of SAX words (pyts BagOfWords, per channel, words
    tagged with their channel): SAX-VSM's representation, used for retrieval."""
    _require("pyts")
    from pyts.bag_of_words import BagOfWords  # pylint: disable=g-import-not-at-top
    from sklearn.feature_extraction.text import (
        TfidfVectorizer,
    )  # pylint: disable=g-import-not-at-top

    z = z_normalise(series, observed)
    n, c, t = z.shape
    window_size = min(window_size, t)
    bow = BagOfWords(
        window_size=window_size,
        word_size=min(word_size, window_size),
        n_bins=n_bins,
        numerosity_reduction=True,
        window_step=1,
    )
    docs = [""] * n
    for ch in range(c):
        keep = observed[:, ch].any(-1)
        words = bow.fit_transform(z[:, ch]) if keep.any() else [""] * n
        for i in np.flatnonzero(keep):
            docs[i] += " " + " ".join(f"c{ch}{w}" for w in words[i].split())
    tfidf = TfidfVectorizer(sublinear_tf=True, token_pattern=r"\S+").fit_transform(docs)
    return (tfidf @ tfidf.T).toarray()


SERIES_BASELINES = {
    "euclidean": euclidean_similarity,
    "dtw": dtw_similarity,
    "sax_vsm": sax_vsm_similarity,
}

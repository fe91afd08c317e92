"""Colour preservation (Gatys et al. 2016, "Preserving color in neural artistic style transfer").

- luminance: keep the stylized luminance, take chroma (YIQ's I and Q) from the content photo.
- histogram: before stylizing, give the style image the content's colour mean and covariance.
"""
from __future__ import annotations

import numpy as np

_RGB2YIQ = np.array([[0.299, 0.587, 0.114],
                     [0.59590059, -0.27455667, -0.32134392],
                     [0.21153661, -0.52273617, 0.31119955]], np.float64)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def rgb_to_yiq(img: np.ndarray) -> np.ndarray:
    return (img.astype(np.float64) @ _RGB2YIQ.T).astype(np.float32)


def yiq_to_rgb(img: np.ndarray) -> np.ndarray:
    return (img.astype(np.float64) @ _YIQ2RGB.T).astype(np.float32)


def transfer_luminance(stylized: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Stylized luminance + content chroma (both (H, W, 3) RGB in [0, 1], same size)."""
    s, c = rgb_to_yiq(stylized), rgb_to_yiq(content)
    return np.clip(yiq_to_rgb(np.concatenate([s[..., :1], c[..., 1:]], axis=-1)), 0.0, 1.0)


def _sqrtm(cov: np.ndarray, inverse: bool = False) -> np.ndarray:
    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 1e-8, None) ** (-0.5 if inverse else 0.5)
    return (vecs * vals) @ vecs.T


def match_color_histogram(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Affinely map `source` pixels so their mean and covariance equal `reference`'s.

    Uses the symmetric matrix square root ("image analogies" variant), which Gatys et al.
    found to keep the style's structure best.
    """
    src = source.reshape(-1, 3).astype(np.float64)
    ref = reference.reshape(-1, 3).astype(np.float64)
    mu_s, mu_r = src.mean(0), ref.mean(0)
    cov_s = np.cov(src, rowvar=False) + 1e-6 * np.eye(3)
    cov_r = np.cov(ref, rowvar=False) + 1e-6 * np.eye(3)
    a = _sqrtm(cov_r) @ _sqrtm(cov_s, inverse=True)
    out = (src - mu_s) @ a.T + mu_r
    return np.clip(out, 0.0, 1.0).reshape(source.shape).astype(np.float32)

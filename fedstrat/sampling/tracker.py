"""Online per-stratum moments of update sketches (:class:`StratumVarianceTracker`)."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from ._validate import as_count
from .fedavg_sized import SizeWeighted, as_size

__all__ = ["StratumVarianceTracker", "COVARIANCE_MAX_DIM"]

#: the largest sketch dimension for which a tracker made with ``covariance=None`` keeps the
#: per-stratum ``dim x dim`` second moments (``H dim^2`` floats: 41k at 10 strata, dim 64)
COVARIANCE_MAX_DIM = 256


class StratumVarianceTracker:
    """Online per-stratum weighted mean and variance of update sketches.

    Weighted Welford: for a new sketch ``x`` with weight ``w``: ``W += w``,
    ``mean += (w/W)(x - mean)``, ``M2 += w (x - mean_old)·(x - mean_new)``; variance
    ``M2 / W`` (trace, summed over dims). With ``ema=lambda`` in (0, 1) past statistics are
    decayed first: ``W <- lambda W``, ``M2 <- lambda M2`` (exponentially weighted moments).
    Feed ``weight = Selection.weights[i]`` (the HT weight ``p_i / pi_i``): the weighted moments
    then estimate the p-weighted stratum mean ``Dbar_h`` and ``sigma_h^2`` used by the pps design
    and :func:`design_neyman_allocation`.

    ``stds()``: strata with fewer than 2 updates get ``prior_std`` or, if None, the pooled std
    of the observed strata (``sqrt(sum M2 / sum W)``), or 1.0 when nothing was observed.

    ``covariance=True`` also keeps the matrix form of ``M2`` per stratum (``M2 += w (x -
    mean_old)(x - mean_new)^T``, same forgetting and rescaling; its trace is ``M2``):
    :meth:`covariances` ``S_h = M2_h / W_h``, whose shape tells how the dispersion spreads
    over the sketch's dimensions (:func:`~fedstrat.sampling.variance.predicted_variance`'s
    ``covs``). None (default): kept when ``dim <=`` :data:`COVARIANCE_MAX_DIM`.
    """

    def __init__(
        self,
        n_strata: int,
        dim: int,
        prior_std: float | None = None,
        ema: float | None = None,
        covariance: bool | None = None,
    ) -> None:
        self.n_strata = as_count(n_strata, "n_strata")
        self.dim = as_count(dim, "dim")
        if prior_std is not None and (not np.isfinite(prior_std) or prior_std < 0):
            raise ValueError("prior_std must be finite and non-negative")
        if ema is not None and not 0.0 < ema < 1.0:
            raise ValueError("ema must be in (0, 1)")
        self.prior_std = prior_std
        self.ema = ema
        self._w = np.zeros(self.n_strata)
        self._mean = np.zeros((self.n_strata, self.dim))
        self._m2 = np.zeros(self.n_strata)
        self._n = np.zeros(self.n_strata, dtype=np.int64)
        self._w2 = np.zeros(self.n_strata)
        # size-weighted moments (weight x size): W, sum w^2, mean, M2, count
        self._sw = SizeWeighted(self.n_strata, self.dim)
        keep = self.dim <= COVARIANCE_MAX_DIM if covariance is None else bool(covariance)
        self._m2mat = _Scatter(self.n_strata, self.dim) if keep else None
        #: the scale the moments are in (:meth:`rescale_to`); None: as fed
        self.unit: float | None = None

    def update(
        self, stratum: int, sketch: np.ndarray, weight: float = 1.0, size: float | None = None
    ) -> None:
        """Add one observation ``sketch`` (dim,) of stratum ``stratum`` with weight ``weight``;
        with the client's ``size`` (any positive scale, e.g. its example count) also to the
        size-weighted moments (weight ``weight * size``, see :meth:`size_weighted`)."""
        h = int(stratum)
        if not 0 <= h < self.n_strata:
            raise ValueError(f"stratum {stratum} out of range 0..{self.n_strata - 1}")
        x = np.asarray(sketch, dtype=np.float64).reshape(-1)
        if x.shape != (self.dim,):
            raise ValueError(f"sketch must have shape ({self.dim},), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("sketch contains NaN or inf")
        w = float(weight)
        if not math.isfinite(w) or w <= 0:
            raise ValueError("weight must be finite and positive")
        if self.ema is not None:
            self._w[h] *= self.ema
            self._m2[h] *= self.ema
            self._w2[h] *= self.ema * self.ema
        self._w[h] += w
        self._w2[h] += w * w
        delta = x - self._mean[h]
        self._mean[h] += (w / self._w[h]) * delta
        self._m2[h] += w * float(delta @ (x - self._mean[h]))
        if self._m2mat is not None:  # x - mean_new = (1 - w / W) delta: symmetric
            self._m2mat.add(h, delta, w * (1.0 - w / self._w[h]), self.ema)
        self._n[h] += 1
        if size is not None:
            self._sw.update(h, x, w, as_size(size), self.ema)

    def update_many(self, strata: np.ndarray, sketches: np.ndarray, weights: np.ndarray) -> None:
        """:meth:`update` of each row ``(strata[i], sketches[i], weights[i])`` in order, bit for
        bit (all rows are checked first: nothing is added if one is invalid). Without ``ema``
        the Welford recursion runs in waves, the j-th rows of every stratum at once: ``W`` and
        ``sum w^2`` are sequential cumulative sums, ``M2`` adds ``w_j delta_j . (x_j -
        mean_j)`` in order; only the means' recursion loops, over the largest stratum's rows."""
        hs = np.asarray(strata).reshape(-1)
        x = np.asarray(sketches, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if x.ndim != 2 or x.shape != (len(hs), self.dim) or w.shape != hs.shape:
            raise ValueError(f"need (n,) strata and weights and (n, {self.dim}) sketches")
        if len(hs) and not (0 <= hs.min() and hs.max() < self.n_strata):
            raise ValueError(f"strata out of range 0..{self.n_strata - 1}")
        if not np.isfinite(x).all():
            raise ValueError("sketch contains NaN or inf")
        if not (np.isfinite(w).all() and (w > 0).all()):
            raise ValueError("weight must be finite and positive")
        if self.ema is not None:  # forgetting between a stratum's rows: one at a time
            for h, row, wi in zip(hs.tolist(), x, w.tolist(), strict=True):
                self.update(h, row, wi)
            return
        hs = hs.astype(np.int64)
        order = np.argsort(hs, kind="stable")  # each stratum's rows, in their order
        count = np.bincount(hs, minlength=self.n_strata)
        first = np.cumsum(count) - count
        rank = np.empty(len(hs), dtype=np.int64)
        rank[order] = np.arange(len(hs)) - first[hs[order]]
        by_size = np.argsort(-count, kind="stable")  # wave j: the strata with > j rows
        place = np.empty_like(by_size)
        place[by_size] = np.arange(self.n_strata)
        wave = np.lexsort((place[hs], rank))  # rows by (rank, stratum by size)
        xw, ww = x[wave], w[wave]
        big = np.zeros(len(hs), dtype=np.float64)  # W after each row: sequential sums
        sq = np.zeros(self.n_strata)
        for h in np.flatnonzero(count):
            rows = order[first[h]:first[h] + count[h]]
            big[rows] = np.cumsum(np.concatenate(([self._w[h]], w[rows])))[1:]
            sq[h] = np.cumsum(np.concatenate(([self._w2[h]], w[rows] * w[rows])))[-1]
        step = (ww / big[wave])[:, None]
        cur = self._mean[by_size]  # copy: the running means, largest stratum first
        delta, after = np.empty_like(xw), np.empty_like(xw)
        bounds = np.concatenate(([0], np.cumsum(np.bincount(rank))))
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            c = cur[:b - a]
            np.subtract(xw[a:b], c, out=delta[a:b])
            c += step[a:b] * delta[a:b]
            after[a:b] = c
        # per row the same dot as ``delta @ y`` of two vectors (matmul's loop, one pair each)
        terms = ww * np.matmul(delta[:, None, :], (xw - after)[:, :, None])[:, 0, 0]
        seq = np.empty(len(hs), dtype=np.int64)
        seq[wave] = np.arange(len(hs))  # a row's place in the waves
        for h in np.flatnonzero(count):
            rows = order[first[h]:first[h] + count[h]]
            self._w[h] = big[rows[-1]]
            self._w2[h] = sq[h]
            self._m2[h] = np.cumsum(np.concatenate(([self._m2[h]], terms[seq[rows]])))[-1]
        self._mean[by_size] = cur
        self._n += count
        if self._m2mat is not None:  # the rows in their order (flushes as with update())
            for i, h in enumerate(hs.tolist()):
                wi, j = float(w[i]), seq[i]
                self._m2mat.add(h, delta[j], wi * (1.0 - wi / big[i]), None)

    def decay(self, factor: float) -> None:
        """Forget the past of every stratum by ``factor`` in (0, 1]: ``W``, ``M2`` times
        ``factor`` and ``sum w^2`` times ``factor^2`` (means and variances unchanged; later
        updates weigh more). Called once per round it is a per-round exponential forgetting,
        independent of how many updates each stratum gets."""
        f = float(factor)
        if not 0.0 < f <= 1.0:
            raise ValueError("factor must be in (0, 1]")
        self._w *= f
        self._m2 *= f
        self._w2 *= f * f
        if self._m2mat is not None:
            self._m2mat.scale(f)
        self._sw.decay(f)

    def rescale_to(self, unit: float) -> None:
        """Express what was tracked in the scale ``unit`` (a mean squared sketch norm, e.g.
        :meth:`.UpdateScale.forecast`): as if every sketch seen so far had been multiplied by
        ``sqrt(unit / self.unit)`` (Welford moments of ``c x``: means times ``c``, ``M2`` times
        ``c^2``, weights unchanged; exact). The first call only records ``unit`` (what was
        fed before is taken to be in it); :attr:`unit` is None until then."""
        u = float(unit)
        if not math.isfinite(u) or u <= 0:
            raise ValueError("unit must be finite and positive")
        if self.unit is not None and u != self.unit:
            f = u / self.unit
            self._mean *= math.sqrt(f)
            self._m2 *= f
            if self._m2mat is not None:
                self._m2mat.scale(f)
            self._sw.rescale(f)
        self.unit = u

    def size_weighted(self, present: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:class:`SizeWeighted` moments of the updates fed with a ``size`` (weight ``w_i
        s_i``): with HT weights ``p_i / pi_i`` and ``s_i`` proportional to ``p_i`` they estimate
        the ``p_i^2``-weighted stratum mean and dispersion that FedAvg's MSE needs
        (:func:`fedstrat.sampling.fedavg_sized.fedavg_terms`). ``means`` (H, dim),
        ``variances`` (NaN with < 2 sized updates) and Kish ``effective_counts``; only the
        strata ``present`` (an index) when given."""
        out = self._sw.moments(self._w, self._w2)
        return out if present is None else {k: v[present] for k, v in out.items()}

    def counts(self) -> np.ndarray:
        """Number of updates seen per stratum."""
        return self._n.copy()

    def effective_counts(self) -> np.ndarray:
        """Kish's effective number of updates per stratum, ``(sum w)^2 / sum w^2`` (with the
        exponential forgetting applied to both); equals :meth:`counts` for equal weights
        without ``ema``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self._w2 > 0, self._w**2 / self._w2, 0.0)

    def means(self) -> np.ndarray:
        """Weighted mean sketch per stratum (zeros where unobserved), shape (H, dim)."""
        return self._mean.copy()

    def variances(self) -> np.ndarray:
        """Weighted within-stratum variance (trace) per stratum; NaN with < 2 updates."""
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.where(self._n >= 2, self._m2 / self._w, np.nan)
        return np.maximum(v, 0.0)

    def stds(self) -> np.ndarray:
        """Per-stratum std; strata with < 2 updates get the prior (see class doc)."""
        v = self.variances()
        seen = self._n >= 2
        if self.prior_std is not None:
            prior = float(self.prior_std)
        elif seen.any():
            prior = float(np.sqrt(max(self._m2[seen].sum() / self._w[seen].sum(), 0.0)))
        else:
            prior = 1.0
        return np.where(seen, np.sqrt(np.where(seen, v, 0.0)), prior)

    def covariances(self, present: np.ndarray | None = None) -> np.ndarray | None:
        """Weighted within-stratum covariance ``S_h = M2_h / W_h`` per stratum, shape (H, dim,
        dim) (zeros where fewer than 2 updates: no shape known), only the strata ``present``
        (an index) when given; None when the tracker keeps no matrices (``covariance``)."""
        if self._m2mat is None:
            return None
        idx = slice(None) if present is None else np.asarray(present)
        n, w = self._n[idx], self._w[idx]
        scale = np.where(n >= 2, 1.0 / np.where(w > 0, w, 1.0), 0.0)
        return self._m2mat.matrices(idx, scale)

    def scatter(self, present: np.ndarray | None = None) -> np.ndarray | None:
        """:meth:`covariances` up to a positive factor per stratum (zeros below 2 updates),
        without the pass that normalises them: what the shape of the spread needs
        (:func:`~fedstrat.sampling.variance.spread_shape`). Read-only; None as there."""
        if self._m2mat is None:
            return None
        out = self._m2mat.raw(slice(None) if present is None else np.asarray(present))
        out.flags.writeable = False
        return out

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (plain numpy arrays and floats; the covariances' matrices, if
        kept, as one base64 string under ``m2mat``)."""
        return {
            "n_strata": self.n_strata,
            "dim": self.dim,
            "prior_std": self.prior_std,
            "ema": self.ema,
            "w": self._w.copy(),
            "mean": self._mean.copy(),
            "m2": self._m2.copy(),
            "n": self._n.copy(),
            "w2": self._w2.copy(),
            "unit": self.unit,
            **self._sw.state_dict(),
            **({} if self._m2mat is None else {"m2mat": _packed(self._m2mat.matrices())}),
        }

    def to_json(self) -> dict[str, Any]:
        """:meth:`state_dict` with arrays as lists (the checkpoint form)."""
        return {k: v.tolist() if isinstance(v, np.ndarray) else v
                for k, v in self.state_dict().items()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StratumVarianceTracker:
        """A tracker restored from :meth:`state_dict` or :meth:`to_json`."""
        out = cls(int(state["n_strata"]), int(state["dim"]), prior_std=state["prior_std"],
                  ema=state["ema"], covariance="m2mat" in state)
        out.load_state_dict(state)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        if int(state["n_strata"]) != self.n_strata or int(state["dim"]) != self.dim:
            raise ValueError("state_dict shape does not match this tracker")
        self.prior_std = state["prior_std"]
        self.ema = state["ema"]
        self._w = np.asarray(state["w"], dtype=np.float64).copy()
        self._mean = np.asarray(state["mean"], dtype=np.float64).copy()
        self._m2 = np.asarray(state["m2"], dtype=np.float64).copy()
        self._n = np.asarray(state["n"], dtype=np.int64).copy()
        w2 = state.get("w2")
        if w2 is None:  # older state: as if equal weights (effective count = count)
            w2 = self._w**2 / np.maximum(self._n, 1)
        self._w2 = np.asarray(w2, dtype=np.float64).copy()
        self._sw = SizeWeighted.from_state(self.n_strata, self.dim, state)
        unit = state.get("unit")  # older state: as fed
        self.unit = None if unit is None else float(unit)
        if self._m2mat is not None:  # older state (or none kept): shape unknown, zeros
            packed = state.get("m2mat")
            self._m2mat = _Scatter(self.n_strata, self.dim)
            if packed is not None:
                self._m2mat.mat = _unpacked(packed, self.n_strata, self.dim)


class _Scatter:
    """Per-stratum scatter matrices ``M_h = f_h A_h``: a factor ``f_h`` kept apart, so that
    forgetting and rescaling cost O(1) rather than a pass over ``H dim^2`` numbers;
    :meth:`add` ``(h, v, c, ema)`` is ``M_h <- ema M_h + c v v^T``: ``f_h *= ema``, then the
    row ``u = sqrt(c / f_h) v`` waits until the next read, when each stratum's rows are added
    as one ``U^T U`` (exactly symmetric)."""

    def __init__(self, n_strata: int, dim: int) -> None:
        self.mat = np.zeros((n_strata, dim, dim))
        self.factor = np.ones(n_strata)
        self._rows: dict[int, list[np.ndarray]] = {}

    def add(self, h: int, v: np.ndarray, c: float, ema: float | None) -> None:
        if ema is not None:
            self.factor[h] *= ema
        f = float(self.factor[h])
        self._rows.setdefault(h, []).append(v * math.sqrt(c / f))
        if not 1e-100 <= f <= 1e100 or len(self._rows[h]) >= 256:
            self._flush()

    def scale(self, f: float) -> None:
        """``M_h <- f M_h`` for every stratum."""
        self.factor *= f
        if not np.all((self.factor >= 1e-100) & (self.factor <= 1e100)):
            self._flush()

    def _flush(self) -> None:
        """Add the waiting rows; keep ``f_h`` within 1e+-100 (``A_h`` takes the rest)."""
        for h, rows in self._rows.items():
            if len(rows) == 1:  # u^T u of one row: its outer product (+0.0: no -0, like BLAS)
                outer = np.multiply.outer(rows[0], rows[0])
                outer += 0.0
                self.mat[h] += outer
                continue
            u = np.stack(rows)
            self.mat[h] += u.T @ u
        self._rows.clear()
        far = (self.factor < 1e-100) | (self.factor > 1e100)
        if far.any():
            self.mat[far] *= self.factor[far, None, None]
            self.factor[far] = 1.0

    def raw(self, idx: Any) -> np.ndarray:
        """``A_h = M_h / f_h`` of the strata ``idx`` (a view for a slice, or for an index of
        consecutive strata in order: e.g. every stratum but the last, "unknown")."""
        self._flush()
        if (isinstance(idx, np.ndarray) and idx.ndim == 1 and len(idx)
                and idx.dtype.kind in "iu" and 0 <= idx[0] <= len(self.mat) - len(idx)
                and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx)))):
            idx = slice(int(idx[0]), int(idx[0]) + len(idx))  # consecutive: a view, no copy
        return self.mat[idx]

    def matrices(self, idx: Any = slice(None), scale: np.ndarray | None = None) -> np.ndarray:
        """``M_h`` (times ``scale`` per stratum) of the strata ``idx``: one copy, scaled in
        place (a second temporary of this size costs ~10x)."""
        self._flush()
        out = self.mat[idx].copy() if isinstance(idx, slice) else self.mat[idx]
        f = self.factor[idx] if scale is None else self.factor[idx] * scale
        out *= f[:, None, None]
        return out


def _packed(mats: np.ndarray) -> str:
    """Upper triangles of symmetric (H, d, d) matrices, ``H d (d + 1) / 2`` little-endian
    float64 in base64 (a checkpoint's JSON writes one string: as numbers, 46k of them took
    ~60 ms a round)."""
    iu = np.triu_indices(mats.shape[1])
    return base64.b64encode(mats[:, iu[0], iu[1]].astype("<f8").tobytes()).decode("ascii")


def _unpacked(packed: Any, n_strata: int, dim: int) -> np.ndarray:
    """Inverse of :func:`_packed` (also the nested lists that 592e3b2-1507cf6 wrote;
    ValueError on a wrong size)."""
    size = (n_strata, dim * (dim + 1) // 2)
    if isinstance(packed, str):
        raw = base64.b64decode(packed)
        if len(raw) != 8 * size[0] * size[1]:
            raise ValueError("m2mat does not match this tracker's strata and dimension")
        packed = np.frombuffer(raw, dtype="<f8").reshape(size)
    packed = np.asarray(packed, dtype=np.float64)
    if packed.shape != size:
        raise ValueError("m2mat does not match this tracker's strata and dimension")
    iu = np.triu_indices(dim)
    out = np.zeros((packed.shape[0], dim, dim))
    out[:, iu[0], iu[1]] = packed
    out[:, iu[1], iu[0]] = packed
    return out

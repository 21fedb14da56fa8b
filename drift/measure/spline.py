"""FITPACK's smoothing spline (``scipy.interpolate.splrep(x, y, s=s, k=k)`` + ``splev``) in numpy.

The centerline of :mod:`drift.measure.morphometry` is SCT's: a cubic smoothing spline fitted
by FITPACK's ``curfit`` (Dierckx 1975/1993, ``fpcurf.f``). Importing scipy.interpolate for
that one fit costs more than the whole morphometry of a small image (scipy.optimize,
scipy.linalg, scipy.special), so this module follows ``fpcurf``'s algorithm step by step:
the same knot placement (``fpknot``: a new knot at the middle data point of the knot interval
with the largest residual sum, as many per round as ``fpcurf`` asks), the same smoothing
rows (``fpdisc``: jumps of the k-th derivative at the interior knots, scaled as FITPACK
does) and the same iteration on the smoothing parameter p (rational interpolation,
``fprati``, with FITPACK's initial p, tolerance ``0.001 s`` and 20 iterations). Only the
linear algebra differs: each least-squares problem is solved by numpy (QR / lstsq) rather
than by Givens rotations row by row, which gives the same solution to rounding (the
problems are small and well conditioned: one row per slice, a few tens of coefficients).
Unweighted data only (``w = 1``), ``xb = x[0]``, ``xe = x[-1]``, as SCT calls it.

Where the values are truncated or rounded to voxels (SCT's disc projection,
:mod:`drift.measure.levels`), rounding matters: :func:`fitpack_spline` / :func:`fitpack_values`
are FITPACK's ``curfit`` / ``splev`` statement by statement, the same bits as scipy's compiled
FITPACK (pure Python loops: ~50 ms for the PAM50 cord's 950 slices, a quarter of the import
of scipy.interpolate they replace).

>>> x = np.arange(20.0); y = np.sin(x / 3)
>>> t, c, k = smoothing_spline(x, y, s=0.01)
>>> round(float(spline_values(t, c, k, np.array([4.5]))[0]), 6)
1.007956
"""

from __future__ import annotations

import math

import numpy as np

TOL = 0.001  # curfit's hard-coded relative tolerance on f(p) = s
MAXIT = 20  # curfit's maximum number of iterations on p


def _intervals(t: np.ndarray, k: int, x: np.ndarray) -> np.ndarray:
    """0-based index l of the knot interval t[l] <= x < t[l+1] of every x, within
    [k, n-k-2] (FITPACK: the last interval is closed, points outside extrapolate)."""
    n = len(t)
    return np.clip(np.searchsorted(t, x, side="right") - 1, k, n - k - 2)


def _bspline_values(t: np.ndarray, k: int, x: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """FITPACK's ``fpbspl`` for every x: the k+1 non-zero B-splines B_{l-k..l}(x), (m, k+1)."""
    h = np.zeros((len(x), k + 1))
    h[:, 0] = 1.0
    for j in range(1, k + 1):
        hh = h[:, :j].copy()
        h[:, 0] = 0.0
        for i in range(1, j + 1):
            right = t[ell + i]
            left = t[ell + i - j]
            span = right - left
            with np.errstate(invalid="ignore", divide="ignore"):
                f = np.where(span != 0, hh[:, i - 1] / np.where(span != 0, span, 1.0), 0.0)
            h[:, i - 1] = h[:, i - 1] + f * (right - x)
            h[:, i] = f * (x - left)
    return h


def _design(t: np.ndarray, k: int, x: np.ndarray) -> np.ndarray:
    """Observation matrix (m, n-k-1): row i holds the B-splines at x[i]."""
    ell = _intervals(t, k, x)
    h = _bspline_values(t, k, x, ell)
    a = np.zeros((len(x), len(t) - k - 1))
    a[np.arange(len(x))[:, None], ell[:, None] - k + np.arange(k + 1)[None, :]] = h
    return a


def _triangular_lsq(g: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares by Householder QR (LAPACK, orthogonal like FITPACK's Givens rotations):
    (solution, R, Q^T rhs)."""
    q, r = np.linalg.qr(g)
    z = q.T @ rhs
    return np.linalg.solve(r, z), r, z


def _discontinuities(t: np.ndarray, k: int) -> np.ndarray:
    """FITPACK's ``fpdisc``: (n - 2k - 2, n-k-1) rows, the jump of the k-th derivative of the
    B-splines at each interior knot, with FITPACK's scaling (``fac``)."""
    n = len(t)
    k1, k2 = k + 1, k + 2
    nk1 = n - k1
    nrint = nk1 - k
    fac = nrint / (t[nk1] - t[k1 - 1])  # 1-based t(nk1+1) - t(k1)
    rows = np.zeros((n - 2 * k1, nk1))
    for ell in range(k2, nk1 + 1):  # 1-based, as in fpdisc.f
        lmk = ell - k1
        h = np.zeros(2 * k1 + 1)
        for j in range(1, k1 + 1):
            h[j] = t[ell - 1] - t[ell + j - k2 - 1]
            h[j + k1] = t[ell - 1] - t[ell + j - 1]
        lp = lmk
        for j in range(1, k2 + 1):
            prod = h[j]
            jk = j
            for _ in range(k):
                jk += 1
                prod = prod * h[jk] * fac
            lk = lp + k1
            rows[lmk - 1, lmk - 1 + j - 1] = (t[lk - 1] - t[lp - 1]) / prod
            lp += 1
    return rows


def _fprati(
    p1: float, f1: float, p2: float, f2: float, p3: float, f3: float
) -> tuple[float, float, float, float, float]:
    """FITPACK's ``fprati``: the new p, and (p1, f1, p3, f3) updated so that f1 > 0 > f3."""
    if p3 > 0:
        h1 = f1 * (f2 - f3)
        h2 = f2 * (f3 - f1)
        h3 = f3 * (f1 - f2)
        p = -(p1 * p2 * h3 + p2 * p3 * h1 + p3 * p1 * h2) / (p1 * h1 + p2 * h2 + p3 * h3)
    else:  # p3 = infinity
        p = (p1 * (f1 - f3) * f2 - p2 * (f2 - f3) * f1) / ((f1 - f2) * f3)
    if f2 < 0:
        p3, f3 = p2, f2
    else:
        p1, f1 = p2, f2
    return p, p1, f1, p3, f3


def _next_p(p2: float, f2: float, acc: float, bracket: list[float]) -> float:
    """fpcurf's next p after f(p2) = f2 (= fp - s), with FITPACK's operations in its order;
    ``bracket`` = [p1, f1, p3, f3, ich1, ich3] is updated in place."""
    p1, f1, p3, f3, ich1, ich3 = bracket
    p = p2
    if ich3 == 0 and not f2 - f3 > acc:  # the initial p is too large
        p3, f3 = p2, f2
        p = p * 0.04
        if p <= p1:
            p = p1 * 0.9 + p2 * 0.1
    else:
        if ich3 == 0 and f2 < 0.0:
            ich3 = 1
        if ich1 == 0 and not f1 - f2 > acc:  # the initial p is too small
            p1, f1 = p2, f2
            p = p / 0.04
            if p3 >= 0.0 and p >= p3:
                p = p2 * 0.1 + p3 * 0.9
        else:
            if ich1 == 0 and f2 > 0.0:
                ich1 = 1
            if f2 >= f1 or f2 <= f3:
                raise ValueError("smoothing spline: the iteration on p does not converge (ier=10)")
            p, p1, f1, p3, f3 = _fprati(p1, f1, p2, f2, p3, f3)
    bracket[:] = [p1, f1, p3, f3, ich1, ich3]
    return p


def _knots(xb: float, xe: float, interior: list[float], k: int) -> np.ndarray:
    return np.array([xb] * (k + 1) + interior + [xe] * (k + 1), dtype=float)


def smoothing_spline(
    x: np.ndarray, y: np.ndarray, s: float, k: int = 3
) -> tuple[np.ndarray, np.ndarray, int]:
    """FITPACK ``curfit`` (iopt=0, w=1, xb=x[0], xe=x[-1]): the spline of degree ``k`` with
    the fewest knots FITPACK finds whose residual sum of squares is ``s`` (within 0.1 %).
    Returns (knots, coefficients, k), the coefficients padded to ``len(knots)`` like splrep's.

    ``x`` must be strictly increasing with ``len(x) > k``; ``s > 0``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    # Fit about the mean (the B-splines sum to one, so the mean goes back onto every
    # coefficient): a constant centerline comes out exactly constant, its derivative 0.0.
    mean = float(y.mean()) if len(y) else 0.0
    t, c, k = _smoothing_spline(x, y - mean, s, k)
    c[: len(t) - k - 1] += mean
    return t, c, k


def _smoothing_spline(
    x: np.ndarray, y: np.ndarray, s: float, k: int
) -> tuple[np.ndarray, np.ndarray, int]:
    m = len(x)
    if m <= k or not np.all(np.diff(x) > 0) or s <= 0:
        raise ValueError("smoothing_spline needs len(x) > k, increasing x and s > 0")
    k1 = k + 1
    nmin, nmax = 2 * k1, m + k1
    nest = max(m + k + 1, 2 * k + 3)
    acc = TOL * s
    xb, xe = float(x[0]), float(x[-1])

    interior: list[float] = []
    fpint: list[float] = []
    nrdata: list[int] = [m - 2]
    fp0 = fpold = 0.0
    nplus = 0
    first = True  # FITPACK's ier = -2: the least-squares polynomial (n = nmin)

    def interp_knots() -> list[float]:
        k3 = k // 2
        mk1 = m - k1
        if k % 2:
            return [float(v) for v in x[k3 + 1 : k3 + 1 + mk1]]
        return [float(v) for v in (x[k3 + 1 : k3 + 1 + mk1] + x[k3 : k3 + mk1]) * 0.5]

    while True:
        t = _knots(xb, xe, interior, k)
        n = len(t)
        first = n == nmin
        a = _design(t, k, x)
        c, r, z = _triangular_lsq(a, y)
        fp = float(((a @ c - y) ** 2).sum())
        if first:
            fp0 = fp
        fpms = fp - s
        if abs(fpms) < acc:
            return t, _padded(c, n), k
        if fpms < 0:
            break  # knots accepted; part 2 (unless the polynomial already fits)
        if n in (nmax, nest):
            return t, _padded(c, n), k
        if first:
            nplus = 1
        else:
            npl1 = nplus * 2
            if fpold - fp > acc:
                npl1 = int(nplus * fpms / (fpold - fp))
            nplus = min(nplus * 2, max(npl1, nplus // 2, 1))
        fpold = fp
        # Residual sum per knot interval; a data point on a knot counts half to each side.
        term = (a @ c - y) ** 2
        nrint = n - nmin + 1
        inner = np.asarray(interior)
        on_knot = np.isin(x, inner)
        where = np.searchsorted(inner, x, side="left")
        fpint = (
            np.bincount(where[~on_knot], weights=term[~on_knot], minlength=nrint)
            + np.bincount(where[on_knot], weights=term[on_knot] * 0.5, minlength=nrint)
            + np.bincount(where[on_knot] + 1, weights=term[on_knot] * 0.5, minlength=nrint + 1)[
                :nrint
            ]
        ).tolist()
        added = 0
        for _ in range(nplus):
            if not _add_knot(x, interior, fpint, nrdata):
                break
            added += 1
            n += 1
            if n == nmax:  # as many knots as for interpolation: place them so
                interior = interp_knots()
                break
            if n == nest:
                break
        if not added:  # no interval left to split (cannot happen with distinct x)
            return t, _padded(c, len(t)), k
    if first:
        return t, _padded(c, n), k

    # Part 2: the smoothing spline sp(x) on these knots, p such that f(p) = s.
    nk1 = n - k1
    b = _discontinuities(t, k)
    bracket = [0.0, fp0 - s, -1.0, fpms, 0.0, 0.0]  # p1, f1, p3, f3, ich1, ich3
    # FITPACK's first p: nk1 / the sum of the diagonal of the triangularised observation
    # matrix (its Givens rotations keep that diagonal positive).
    p = nk1 / float(np.abs(np.diag(r)).sum())
    rhs = np.concatenate([z, np.zeros(len(b))])
    for it in range(1, MAXIT + 1):
        # The rows of b, weighted 1/p, appended to the triangularised system (FITPACK
        # rotates them into it): the same least-squares problem.
        c = _triangular_lsq(np.vstack([r, b / p]), rhs)[0]
        fp = float(((a @ c - y) ** 2).sum())
        fpms = fp - s
        if abs(fpms) < acc or it == MAXIT:
            break
        p = _next_p(p, fpms, acc, bracket)
    return t, _padded(c, n), k


def _padded(c: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[: len(c)] = c
    return out


def _add_knot(x: np.ndarray, interior: list[float], fpint: list[float], nrdata: list[int]) -> bool:
    """FITPACK's ``fpknot``: a new knot at the middle data point of the interval with the
    largest residual sum (among intervals holding data points); False when there is none."""
    fpmax = 0.0
    number = -1
    maxpt = maxbeg = 0
    jbegin = 0  # 0-based index of the interval's left boundary point
    for j, (fj, jpoint) in enumerate(zip(fpint, nrdata, strict=True)):
        if not (fpmax >= fj or jpoint == 0):
            fpmax, number, maxpt, maxbeg = fj, j, jpoint, jbegin
        jbegin += jpoint + 1
    if number < 0:
        return False
    ihalf = maxpt // 2 + 1
    nrx = maxbeg + ihalf
    left, right = ihalf - 1, maxpt - ihalf
    nrdata[number : number + 1] = [left, right]
    fpint[number : number + 1] = [fpmax * left / maxpt, fpmax * right / maxpt]
    interior.insert(number, float(x[nrx]))
    return True


def spline_values(t: np.ndarray, c: np.ndarray, k: int, x: np.ndarray, der: int = 0) -> np.ndarray:
    """``splev(x, (t, c, k), der)`` with extrapolation outside the knots (ext=0)."""
    t = np.asarray(t, dtype=float)
    x = np.asarray(x, dtype=float)
    coef = np.asarray(c, dtype=float)[: len(t) - k - 1]
    for _ in range(der):  # splder: the derivative's coefficients on t[1:-1], degree k - 1
        span = t[k + 1 : k + 1 + len(coef) - 1] - t[1 : len(coef)]
        with np.errstate(invalid="ignore", divide="ignore"):
            coef = np.where(span > 0, k * np.diff(coef) / np.where(span > 0, span, 1.0), 0.0)
        t = t[1:-1]
        k -= 1
    ell = _intervals(t, k, x)
    h = _bspline_values(t, k, x, ell)
    index = ell[:, None] - k + np.arange(k + 1)[None, :]
    return (h * coef[index]).sum(axis=1)


# ------------------------------------------------------------------------------------------
# FITPACK itself, operation by operation (for callers that truncate or round the values)
# ------------------------------------------------------------------------------------------
# SCT truncates and rounds its centerline to voxels, so its levels depend on the last bit of
# FITPACK's own rounding: a centerline at exactly 70.0 comes out 70 +- 1e-12 and truncates to
# 69 on some slices. The functions below are FITPACK's ``curfit`` (``fpcurf`` with
# ``fpbspl``, ``fpgivs``, ``fprota``, ``fpback``, ``fpknot``, ``fpdisc``, ``fprati``) and
# ``splev`` translated statement by statement: the same IEEE operations in the same order
# (Givens rotations row by row, sums left to right), so the same bits as scipy's compiled
# FITPACK (``splrep``/``splev``), without importing scipy.interpolate. Arrays are 1-based
# lists (index 0 unused) so that every index reads as in the Fortran.
#
# Skipped work, all exact: rotations by a zero pivot onto a positive diagonal are identities
# (cos = 1, sin = 0) and are left out; the B-spline values of the data rows are computed for
# all rows at once by :func:`_bspline_values` (elementwise, the same operations as fpbspl).


def _givens(piv: float, ww: float) -> tuple[float, float, float]:
    """``fpgivs``: (cos, sin, the new diagonal ww)."""
    store = abs(piv)
    if store >= ww:
        r = ww / piv
        dd = store * math.sqrt(1.0 + r * r)
    else:
        r = piv / ww
        dd = ww * math.sqrt(1.0 + r * r)
    return ww / dd, piv / dd, dd


def _back(a: list[list[float]], z: list[float], n: int, k: int, c: list[float]) -> None:
    """``fpback``: solve the upper triangular band system a c = z (bandwidth k) into c."""
    k1 = k - 1
    c[n] = z[n] / a[n][1]
    i = n - 1
    for j in range(2, n + 1):
        store = z[i]
        i1 = j - 1 if j <= k1 else k1
        m = i
        row = a[i]
        for ell in range(1, i1 + 1):
            m += 1
            store = store - c[m] * row[ell + 1]
        c[i] = store / row[1]
        i -= 1


def _disc_rows(t: list[float], n: int, k2: int) -> list[list[float]]:
    """``fpdisc``: the rows b(1..n-2k-2, 1..k2) (1-based)."""
    k1 = k2 - 1
    k = k1 - 1
    nk1 = n - k1
    nrint = nk1 - k
    fac = float(nrint) / (t[nk1 + 1] - t[k1])
    b = [[0.0] * (k2 + 1) for _ in range(nk1 - k1 + 1)]
    h = [0.0] * (2 * k1 + 1)
    for ell in range(k2, nk1 + 1):
        lmk = ell - k1
        for j in range(1, k1 + 1):
            h[j] = t[ell] - t[ell + j - k2]
            h[j + k1] = t[ell] - t[ell + j]
        lp = lmk
        for j in range(1, k2 + 1):
            jk = j
            prod = h[j]
            for _ in range(k):
                jk += 1
                prod = prod * h[jk] * fac
            b[lmk][j] = (t[lp + k1] - t[lp]) / prod
            lp += 1
    return b


def _new_knot(
    x: list[float], t: list[float], n: int, fpint: list[float], nrdata: list[int], nrint: int
) -> None:
    """``fpknot`` (istart = 1): t, fpint, nrdata updated in place for n + 1 knots."""
    k = (n - nrint - 1) // 2
    fpmax = 0.0
    jbegin = 1
    number = maxpt = maxbeg = 0
    for j in range(1, nrint + 1):
        jpoint = nrdata[j]
        if not (fpmax >= fpint[j] or jpoint == 0):
            fpmax, number, maxpt, maxbeg = fpint[j], j, jpoint, jbegin
        jbegin = jbegin + jpoint + 1
    if number == 0:
        raise ValueError("smoothing spline: no knot interval left to split")
    ihalf = maxpt // 2 + 1
    nrx = maxbeg + ihalf
    nxt = number + 1
    for j in range(nxt, nrint + 1):
        jj = nxt + nrint - j
        fpint[jj + 1] = fpint[jj]
        nrdata[jj + 1] = nrdata[jj]
        t[jj + k + 1] = t[jj + k]
    nrdata[number] = ihalf - 1
    nrdata[nxt] = maxpt - ihalf
    am = float(maxpt)
    fpint[number] = fpmax * float(nrdata[number]) / am
    fpint[nxt] = fpmax * float(nrdata[nxt]) / am
    t[nxt + k] = x[nrx]


def _residual_terms(
    x: list[float],
    y: list[float],
    t: list[float],
    c: list[float],
    q: list[list[float]],
    nk1: int,
    k: int,
) -> list[float]:
    """fpcurf's loop 160-170 / 310-320: (s(x_i) - y_i)**2 of every data point (1-based)."""
    k1, k2 = k + 1, k + 2
    out = [0.0] * len(x)
    ell = k2
    for it in range(1, len(x)):
        if not (x[it] < t[ell] or ell > nk1):
            ell += 1
        l0 = ell - k2
        row = q[it]
        term = 0.0
        for j in range(1, k1 + 1):
            term = term + c[l0 + j] * row[j]
        d = term - y[it]
        out[it] = d * d
    return out


def fitpack_spline(
    x: np.ndarray, y: np.ndarray, s: float, k: int = 3
) -> tuple[np.ndarray, np.ndarray, int]:
    """``scipy.interpolate.splrep(x, y, s=s, k=k)`` (FITPACK ``curfit``, iopt=0, w=1,
    xb=x[0], xe=x[-1], tol 0.001, 20 iterations on p), bit for bit: (knots, coefficients
    padded to len(knots), k). ``x`` strictly increasing, ``len(x) > k``, ``s > 0``.

    >>> x = np.arange(20.0); y = np.sin(x / 3)
    >>> t, c, k = fitpack_spline(x, y, s=0.01)
    >>> round(float(fitpack_values(t, c, k, np.array([4.5]))[0]), 6)
    1.007956
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    m = len(xa)
    if m <= k or not np.all(np.diff(xa) > 0) or not s > 0:
        raise ValueError("fitpack_spline needs len(x) > k, increasing x and s > 0")
    xs = [0.0, *xa.tolist()]
    ys = [0.0, *ya.tolist()]
    k1, k2 = k + 1, k + 2
    nest = max(m + k + 1, 2 * k + 3)
    nmin, nmax = 2 * k1, m + k1
    acc = TOL * s
    xb, xe = xs[1], xs[m]
    t = [0.0] * (nest + 1)
    c = [0.0] * (nest + 1)
    fpint = [0.0] * (nest + 1)
    nrdata = [0] * (nest + 1)
    n, fpold, nplus, fp0, fpms = nmin, 0.0, 0, 0.0, 0.0
    nrdata[1] = m - 2
    ier = 0
    a: list[list[float]] = []
    z: list[float] = []
    q: list[list[float]] = []
    for _ in range(m):  # part 1: the knots
        if n == nmin:
            ier = -2
        nrint = n - nmin + 1
        nk1 = n - k1
        for j in range(1, k1 + 1):
            t[j] = xb
            t[n + 1 - j] = xe
        fp = 0.0
        z = [0.0] * (nk1 + 1)
        a = [[0.0] * (k1 + 1) for _ in range(nk1 + 1)]
        t0 = np.asarray(t[1 : n + 1])
        ell0 = _intervals(t0, k, xa)  # fpcurf's search, 0-based
        h_all = _bspline_values(t0, k, xa, ell0)
        q = [[0.0]] + [[0.0, *row] for row in h_all.tolist()]
        for it, lrow in zip(range(1, m + 1), (ell0 + 1).tolist(), strict=True):
            yi = ys[it]
            h = q[it][:]
            j = lrow - k1
            for i in range(1, k1 + 1):
                j += 1
                piv = h[i]
                if piv == 0.0:
                    continue
                row = a[j]
                cos, sin, row[1] = _givens(piv, row[1])
                zj = z[j]
                z[j] = cos * zj + sin * yi
                yi = cos * yi - sin * zj
                if i == k1:
                    break
                i2 = 1
                for i1 in range(i + 1, k1 + 1):
                    i2 += 1
                    h1, a2 = h[i1], row[i2]
                    row[i2] = cos * a2 + sin * h1
                    h[i1] = cos * h1 - sin * a2
            fp = fp + yi * yi
        if ier == -2:
            fp0 = fp
        _back(a, z, nk1, k1, c)
        fpms = fp - s
        if abs(fpms) < acc:
            return _tck(t, c, n, k)
        if fpms < 0.0:
            break
        if n in (nmax, nest):
            return _tck(t, c, n, k)
        if ier != 0:
            nplus = 1
            ier = 0
        else:
            npl1 = nplus * 2
            if fpold - fp > acc:
                npl1 = int(float(nplus) * fpms / (fpold - fp))
            nplus = min(nplus * 2, max(npl1, nplus // 2, 1))
        fpold = fp
        # fpint: residual sum per knot interval, a point on a knot half to each side
        terms = _residual_terms(xs, ys, t, c, q, nk1, k)
        fpart = 0.0
        i = 1
        ell = k2
        for it in range(1, m + 1):
            new = not (xs[it] < t[ell] or ell > nk1)
            if new:
                ell += 1
            term = terms[it]
            fpart = fpart + term
            if new:
                store = term * 0.5
                fpint[i] = fpart - store
                i += 1
                fpart = store
        fpint[nrint] = fpart
        for _ in range(nplus):
            _new_knot(xs, t, n, fpint, nrdata, nrint)
            n += 1
            nrint += 1
            if n == nmax:  # knots as for interpolation (odd k: at the data points)
                mk1 = m - k1
                k3 = k // 2
                for step in range(mk1):
                    j = k3 + 2 + step
                    t[k2 + step] = xs[j] if k % 2 else (xs[j] + xs[j - 1]) * 0.5
                break
            if n == nest:
                break
    if ier == -2:
        return _tck(t, c, n, k)
    # part 2: the smoothing spline on these knots, p such that f(p) = s
    b = _disc_rows(t, n, k2)
    bracket = [0.0, fp0 - s, -1.0, fpms, 0.0, 0.0]  # p1, f1, p3, f3, ich1, ich3
    p = 0.0
    for i in range(1, nk1 + 1):
        p = p + a[i][1]
    p = float(nk1) / p
    n8 = n - nmin
    for iteration in range(1, MAXIT + 1):
        pinv = 1.0 / p
        c = [0.0] * (nest + 1)
        c[1 : nk1 + 1] = z[1 : nk1 + 1]
        g = [[*a[i], 0.0] if i else [0.0] for i in range(nk1 + 1)]
        for it in range(1, n8 + 1):
            h = [0.0] + [v * pinv for v in b[it][1:]]
            yi = 0.0
            for j in range(it, nk1 + 1):
                piv = h[1]
                row = g[j]
                if piv == 0.0 and row[1] > 0.0 and not any(h):
                    break  # the rest of the row is zero: identities
                cos, sin, row[1] = _givens(piv, row[1])
                cj = c[j]
                c[j] = cos * cj + sin * yi
                yi = cos * yi - sin * cj
                if j == nk1:
                    break
                i2 = nk1 - j if j > n8 else k1
                for i in range(1, i2 + 1):
                    i1 = i + 1
                    h1, g1 = h[i1], row[i1]
                    row[i1] = cos * g1 + sin * h1
                    h[i] = cos * h1 - sin * g1
                h[i2 + 1] = 0.0
        _back(g, c, nk1, k2, c)
        fp = 0.0
        for term in _residual_terms(xs, ys, t, c, q, nk1, k)[1:]:
            fp = fp + term
        fpms = fp - s
        if abs(fpms) < acc or iteration == MAXIT:
            break
        p = _next_p(p, fpms, acc, bracket)
    return _tck(t, c, n, k)


def _tck(t: list[float], c: list[float], n: int, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    coef = np.zeros(n)
    coef[: n - k - 1] = c[1 : n - k]
    return np.asarray(t[1 : n + 1]), coef, k


def fitpack_values(t: np.ndarray, c: np.ndarray, k: int, x: np.ndarray) -> np.ndarray:
    """``scipy.interpolate.splev(x, (t, c, k))`` (FITPACK ``splev``, ext=0) bit for bit:
    fpbspl's recurrence and the sum ``sp = sp + c(ll)*h(j)`` in FITPACK's order, for all x
    at once (elementwise operations round exactly as the scalar ones)."""
    t = np.asarray(t, dtype=float)
    x = np.asarray(x, dtype=float)
    coef = np.asarray(c, dtype=float)
    ell = _intervals(t, k, x)
    h = _bspline_values(t, k, x, ell)
    sp = np.zeros(len(x))
    for j in range(k + 1):
        sp = sp + coef[ell - k + j] * h[:, j]
    return sp

"""Calibration of a window-agnostic model's standard deviations as `infer` reads spectra.

The network's sigmas are scaled during training by one factor per parameter so that
68.3 % of the validation errors fall inside ±1 sigma (`module.DysonianRegressor`). That
validation split is read on the whole sweep; `infer` (and `sets`) read a narrow line
again on a window zoomed around it, where the resampled noise is smoother and the
errors differ, and the error distribution also changes with p (it grows towards the
fold of A/D, `lineshapes.p_fold`). Scaling by one factor overall leaves the coverage
right on average and wrong in parts of the input space.

`fit_calibration` fits, on fresh simulated spectra of the model's own ranges read
through the same path as `infer` (`infer.predict_zoomed`), a log-linear model of the
factor each sigma needs, per parameter:

    log factor = w . f,
    f = (1, zoomed, (1 - zoomed) * (l, l^2, u, u^2, u r, u r^2), r, r^2, r^3, s, s^2)

with l = log(distance from B0 to the nearer end of the window read / dB) (lines near
an end are read worse than the network alone admits, lines in the middle better),
u = log(dB / window width), r = p / p_fold (the error in p grows towards the fold of
A/D, `lineshapes.p_fold`), and s = log(the parameter's own sigma, relative to the
window width for B0 and dB), centred on its mean over the fitting draw (the
likelihood-trained sigmas spread too little or too much between easy and hard lines),
all from the *predicted* values, never the truth. Since version 8 also, for a zoomed
reading, c = (B0 - the window's centre) / dB as c, c^2, |c|, c^3: how far this reading
moved the line from where the reading before put it (the window's centre), or, where
an end of the sweep cut the window, how far off centre the line had to be read. Over
the fitting draw a zoomed B0 was read a median 0.05 line widths from its window's
centre, ten times its median error, and the network pulls a line off centre towards
it (correlation of c with B0's error -0.6); such lines, and those of cut windows, are
read worse, and without c their errors widened every zoomed sigma, so that on the
prior-work sets, whose lines are narrow corners of the fitting draw placed well (set-2:
a median 0.012 line widths off centre), B0's ±1σ held up to 80 %. And for p nine hat
functions of r (`P_KNOTS`): p's error, relative
to its sigma, rises and falls with p (over the fitting draw ±1σ held 0.76 / 0.55 /
0.73 / 0.58 / 0.74 of the errors for true p in 0-0.5 / 0.5-1 / 1-1.5 / 1.5-2 / 2-2.7),
which the cubic in r does not follow; set-1, whose p lies in 0.5-2, had ±1σ 0.61. The
weights minimise the Gaussian negative log-likelihood of the errors (scipy, when
fitting only); then the constant term is set so that the ±1 sigma and ±2 sigma
coverage of the fitting draw lie as deep inside the bands 0.63-0.73 and 0.92-0.97 as
one factor can put them (`_closest_factor`).
`apply_calibration` multiplies the sigmas by exp(w . f). The fitted model travels in
the checkpoint's ``dysonian_pl`` section as ``sigma_calibration``.

The mean error, too (version 7): the networks read dB 0.3-0.7 % low on average over the
simulated lines, by an amount that depends on the same features (up to 1.3 % for the
plate ensemble and 3 % for the sphere, near the fold and for wide lines). Before the
sigmas are fitted, dB is corrected to
dB * (1 + w_b . f) with w_b the least-squares fit of the truth on that draw (shared
features only; the correction bounded by its range there, so a line unlike any of them
gets no larger one); `apply_bias` applies it, before `apply_calibration`, and the sigmas
are fitted on, and apply to, the corrected values. On the `sets` draws it lowered dB's
MAE by 2-31 % (set-4 0.395 -> 0.273 G, set-2 2.60 -> 2.53 G). Since version 8 B0 is
corrected too, to B0 + dB * (w_0 . f), with the shared features and the hats of r
apart for zoomed and whole-sweep readings (`BIAS_FEATURES`): B0's mean error is a few
thousandths of dB, and it follows p (plate: -4 to -8 thousandths for p / p_fold
0.6-0.8, +1 beyond; sphere: +9 to +12 beyond 0.5), which on the narrow sets, whose
scatter is as small, was most of the error (set-2 2.0 -> 1.2 G, set-6 0.077 ->
0.051 G on cached readings). With version 7's features alone that correction left B0's
sigmas too wide on three sets (±1σ 0.74-0.87); with c it does not. And p, to
p + w_2 . (hats of r at 0.2-0.8): its mean error rises and falls with p as much as its
scatter (plate ensemble, thousandths: +7 at p / p_fold 0.3, -5 at 0.6, +18 at 0.85),
which version 7's polynomial could not follow (it made p 20-65 % worse on the plate
sets). Below 0.1 and above 0.9 p_fold the correction is 0: there the mean error is the
pull of the trained range's ends (-80 thousandths at the lower end, where the networks
read no simulated line below p = 0.13), and correcting it pushed the thin BDPA line of
shared/ from p = 0.056 to -0.046. On cached readings the hats brought p's MAE 6-20 %
lower on all six sets.

Since version 9 B0's correction has the hats of r times c too, for zoomed readings
(`BIAS_FEATURES`): how B0's mean error follows p depends on where in the zoomed window
the line lies. With the hats alone, set-2's lines (placed well: c a median 0.012) were
left -4 to -6.5 thousandths of dB off for p 1.8-2.0 (over the fitting draw, whose lines
lie further off centre, -1.3 to -3.8). Recalibrated on 40,000 + 40,000 lines, the
product lowered B0's MAE on set-2 by 2 % (1.142 -> 1.120 G) and left every other
number of the sets within their draw's noise; set-2's B0 ±1σ stayed 0.74 (on 10,000
lines refitted it had reached 0.72-0.73: the bias at p 1.8-2.0 is set-2's own, and
the product removes a third of it at most).

Since version 10 p's factor has the hats of r times u and u^2 too (`WIDE_HATS`;
whole-sweep readings): how p's error follows p changes with the line's width in its
window. Over a separate draw of 10,000 simulated lines (cached readings), version 9 left p's
±1σ at 0.53-0.61 for lines 15-26 % of their window wide at p / p_fold 0.4-0.8 (0.68-0.69
for narrow ones), which is where set-1's lines lie (±1σ 0.616 there); refitted on those
cached readings, the product put set-1's p at 0.642-0.646 on two draws and moved no
other set's coverage outside its band. p's factor also leaves out the polynomial in r
(`POLY_R`): beside the hats it was degenerate, fitted to its bounds, and made the factor
jump below the hats' first knot (a thin sample's p near 0).

Since version 11 B0's correction and factor are fitted differently, on the same
features but one: (a) the correction is fitted on the error in line widths, every line
counted alike (`FIT_IN_LINE_WIDTHS`); fitted on the error in gauss, the fitting draw's
lines 100-500 G wide outweighed those 10-50 G wide by their width squared, so the
correction followed the wide ones; (b) for a zoomed reading its hats of r are every 1/30
(`ZOOMED_KNOTS`), not every tenth: B0's mean error read zoomed swings with p faster than
the tenths follow (the truth minus the reading +2.7, +3.3, +1.7, +3.6, +6.0, +8.8, +1.6,
-3.3 thousandths of dB for p in 0.2-wide bins from 0.8 to 2.2, lines 4-8 % of the sweep
wide); (c) its factor maximises a Laplace likelihood (`LAPLACE_FIT`), whose scale
follows the mean |error|, not the variance, which the tails of a mixture inflate: what
the correction leaves of B0's mean error differs from line to line, and the Gaussian fit
covered the bulk of set-2's lines too much (±1σ 0.745 with ±2σ 0.934). Refitted on the 40,000 lines the shipped tables were
fitted on (cached readings), set-2's B0 MAE fell 21 % (1.114 -> 0.882 G), set-6's 4 %,
the others' within 1 %, and its ±1σ to 0.716 and 0.728 on the two draws: every one of
the 36 coverages inside its band on both. Recalibrated, the shipped models' `sets` run
gave the same: 36 of 36, set-2's B0 MAE 1.120 -> 0.896 G (docs/model_card.md).

Beyond the simulated lines: the fitted factor is mostly below 1 (the network's own
sigmas are wide) and, for p and dB read zoomed, barely depends on the sigma itself (on
simulated lines a larger sigma does not mean a larger error there). A real line unlike
any simulated one (several lines, a shape that is not one Dysonian: Sample-Q.DSC in
shared/data, whose readings of p on windows 10, 6.7 and 4 line widths wide were 0.74,
0.99 and 1.77) makes the network far less sure than on any of them (p's sigma 20 times
its usual, dB's 8 times), and the factor would shrink that to a confident sigma
(0.59 -> 0.023). So the table also records, per parameter, the 99.9th percentile of s
over the fitting draw (``s_hi``); where a sigma lies beyond it, `apply_calibration`
keeps the larger of the calibrated and the network's own sigma, and `beyond_range`
says which (`infer` warns).

NumPy only: `infer` applies it without importing torch.
"""

from __future__ import annotations

import math

import numpy as np

from .lineshapes import p_fold

__all__ = [
    "DEBIASED",
    "FEATURES",
    "WIDE_HATS",
    "POLY_R",
    "ZOOMED_HATS",
    "FIT_IN_LINE_WIDTHS",
    "LAPLACE_FIT",
    "ONE_SIGMA",
    "SHARED",
    "TWO_SIGMA",
    "BANDS",
    "BIAS_FEATURES",
    "HATTED",
    "HATS",
    "apply_bias",
    "apply_calibration",
    "beyond_range",
    "features",
    "outside_answers",
    "fit_calibration",
]

#: probability mass within ±1 and ±2 sigma of a Gaussian
ONE_SIGMA = math.erf(1 / math.sqrt(2))
TWO_SIGMA = math.erf(2 / math.sqrt(2))
#: the coverage bands a calibrated sigma is held to (issue 6): ±1σ, ±2σ
BANDS = ((0.63, 0.73), (0.92, 0.97))
#: the features shared by every parameter (`features`)
SHARED_NAMES = (
    "1", "zoomed", "l", "l^2", "u", "u^2", "r", "r^2", "r^3", "u r", "u r^2",
    "zoomed c", "zoomed c^2", "zoomed |c|", "zoomed c^3",
)  # fmt: skip
SHARED = len(SHARED_NAMES)
#: the range r = p / p_fold is clipped to in every feature: the networks' answers on the
#: fitting draw (trained below the fold; none below 0.05), so that a line read outside it
#: (a thin sample's p near 0, a p beyond the fold) gets the factor and correction of the
#: nearest simulated lines, not an extrapolation of a polynomial (before version 8 r was
#: clipped to 0-3, and strong1's p of -0.007 got a sigma of 0.10 from the cubic at r = 0,
#: 0.28 with version 8's weights until this clip)
R_RANGE = (0.05, 1.0)
#: knots of the hat functions of r = p / p_fold (`_hats`): piecewise linear in r from
#: 0.1 to 1, flat beyond, so that a line read outside them gets no factor or correction
#: the fitting draw did not have (the networks read no simulated line below r = 0.05,
#: and the value at r = 0 would be an extrapolation: it gave BDPA's p a sigma of 1.3)
P_KNOTS = tuple(k / 10 for k in range(1, 11))
#: the hats' names (the first knot's hat is left out: with the constant they would sum to 1)
HATS = tuple(f"hat r={k:g}" for k in P_KNOTS[1:])
#: knots of the finer hats of r in B0's correction of a zoomed reading (version 11):
#: every 1/30 of r from 0.1 to 1 (0.09 in p for the plate). B0's mean error read zoomed
#: swings with p faster than the tenths follow: over 40,000 simulated lines (plate
#: ensemble, lines 4-8 % of the sweep wide, uncorrected), the truth minus the reading was
#: +2.3, +0.7, +2.7, +3.3, +1.7, +3.6, +6.0, +8.8, +1.6 and -3.3 thousandths of dB for p
#: in 0.2-wide bins from 0.4 to 2.2
ZOOMED_KNOTS = tuple(float(k) for k in np.linspace(0.1, 1.0, 28))
#: the finer hats' names, for zoomed readings (`BIAS_FEATURES`)
ZOOMED_HATS = tuple(f"zoomed hat r={k:.4g}" for k in ZOOMED_KNOTS[1:])
#: the hats of r times u and u^2 (u = log(dB / window) of a whole-sweep reading): how a
#: sigma follows p, for lines wide in their window (version 10)
WIDE_HATS = tuple(f"u {h}" for h in HATS) + tuple(f"u^2 {h}" for h in HATS)
#: names of the columns of a sigma's factor: shared, hats of r and `WIDE_HATS` (weight 0
#: except for the parameters in `HATTED`), the parameter's own log sigma and its square
FEATURES = SHARED_NAMES + HATS + WIDE_HATS + ("s", "s^2")
#: the parameters whose sigma factor follows p in hats: p's (its error rises and falls
#: with p in a way no cubic follows; on B0 and dB the hats made the sets' coverage worse)
HATTED = (2,)
#: the shared features the factor of a parameter in `HATTED` leaves out (version 10):
#: its hats and `WIDE_HATS` are its functions of r, and beside them the cubic in r was
#: fitted to its bounds (weights of ±20 that cancel over the draw), which made the
#: factor jump between the hats' flat end at r = 0.1 and r = 0.05: by 2.6 times with
#: version 9's weights, 29 times with the wide hats added
POLY_R = ("r", "r^2", "r^3", "u r", "u r^2")
#: names of the columns of the mean-error correction (`_bias_features`): the shared
#: features, the hats of r, the finer hats of r of a zoomed reading (`ZOOMED_HATS`), and
#: the hats of r times c (the zoomed reading's offset from its window's centre, in line
#: widths: `features`)
BIAS_FEATURES = SHARED_NAMES + HATS + ZOOMED_HATS + tuple(f"zoomed c {h}" for h in HATS)
CALIBRATION_VERSION = 11
#: the parameters (indices into B0, dB, p) whose value `apply_bias` corrects, each with
#: the `BIAS_FEATURES` its correction uses (the others at weight 0): B0 all (its mean
#: error follows p, differently read zoomed and on the whole sweep), dB the shared
#: ones, p the hats of r at 0.2-0.8 alone (its mean error rises and falls with p, as
#: large as its scatter: +7, -5, +18 thousandths at p / p_fold 0.3, 0.6, 0.85), so that
#: p is not corrected below 0.1 p_fold or above 0.9 p_fold: there its mean error is the
#: pull of the trained range's ends (the networks read no simulated line's p below
#: 0.13), which would push a thin sample's p below 0 (BDPA in shared/: 0.056 -> -0.046)
DEBIASED = {0: BIAS_FEATURES, 1: SHARED_NAMES, 2: HATS[:7]}
#: the corrected parameters whose correction is in units of dB (B0 and dB; p's in p)
IN_LINE_WIDTHS = (0, 1)
#: the parameters whose correction is fitted on the error in line widths, every line
#: counted alike (version 11: B0). Fitted on the error in gauss, as before, the lines of
#: the fitting draw 100-500 G wide outweighed those 10-50 G wide by their width squared,
#: and the correction followed them: set-2's lines, 3-13 % of their sweep wide, were
#: left 4-6 thousandths of dB off at p 1.8-2.0. (dB's is fitted as the relative error
#: weighted by dB^2: `_fit_bias`)
FIT_IN_LINE_WIDTHS = (0,)
#: the parameters whose sigma factor maximises a Laplace likelihood (the mean of
#: |error| / sigma + log sigma), not a Gaussian one (version 11: B0). B0's errors are a
#: mixture: scatter and the mean error, corrected only as far as the features follow
#: it, of lines of different p; the Gaussian fit matches their variance, which such a
#: mixture's tails inflate, and covered the lines of the bulk too much (set-2's B0: ±1σ
#: 0.745 with ±2σ 0.934); the Laplace fit matches the mean |error|, which the tails
#: move less
LAPLACE_FIT = (0,)
#: quantiles of the fitted correction over the fitting draw that bound it elsewhere
BIAS_CLIP_QUANTILES = (0.001, 0.999)
#: quantile of s over the fitting draw beyond which a sigma is not shrunk (``s_hi``)
S_HI_QUANTILE = 0.999


def features(
    values: np.ndarray, windows: np.ndarray, zoomed: np.ndarray, geometry: str
) -> np.ndarray:
    """(N, SHARED) features shared by every parameter, of predictions (B0, dB, p in
    physical units) read on `windows` (N, 2), `zoomed` (N,) telling which were read on
    a zoomed window (the first SHARED names of FEATURES)."""
    values = np.asarray(values, dtype=np.float64)
    windows = np.asarray(windows, dtype=np.float64)
    whole = 1.0 - np.asarray(zoomed, dtype=np.float64)
    b0, db = values[:, 0], np.maximum(values[:, 1], 1e-300)
    width = np.maximum(windows[:, 1] - windows[:, 0], 1e-300)
    edge = np.minimum(b0 - windows[:, 0], windows[:, 1] - b0) / db
    l = np.log(np.clip(edge, 0.05, 50.0))  # noqa: E741
    u = np.log(np.clip(db / width, 1e-3, 1.0))
    r = values[:, 2] / p_fold(geometry) if values.shape[1] > 2 else np.zeros(len(values))
    r = np.clip(np.nan_to_num(r, nan=0.0), R_RANGE[0], R_RANGE[1])
    zoom = 1.0 - whole
    c = _offset(values, windows)
    return np.column_stack(
        [np.ones(len(values)), zoom, whole * l, whole * l**2, whole * u, whole * u**2,
         r, r**2, r**3, whole * u * r, whole * u * r**2,
         zoom * c, zoom * c**2, zoom * np.abs(c), zoom * c**3]
    )  # fmt: skip


def _offset(values: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(N,) c: where in its window the line was read, in line widths from the window's
    centre (for a zoomed reading, where the reading before put it, or off it where an end
    of the sweep cut the window); clipped to ±3: beyond, the fitting draw has next to no
    zoomed lines."""
    values = np.asarray(values, dtype=np.float64)
    windows = np.asarray(windows, dtype=np.float64)
    db = np.maximum(values[:, 1], 1e-300)
    return np.clip((values[:, 0] - 0.5 * (windows[:, 0] + windows[:, 1])) / db, -3.0, 3.0)


def _hats(values: np.ndarray, geometry: str, knots: tuple[float, ...] = P_KNOTS) -> np.ndarray:
    """(N, len(knots) - 1) hat functions of r = p / p_fold at the evenly spaced `knots`
    (default `P_KNOTS`; r clipped to them), the first knot's left out."""
    values = np.asarray(values, dtype=np.float64)
    r = np.nan_to_num(values[:, 2] / p_fold(geometry), nan=0.0)
    r = np.clip(r, knots[0], knots[-1])
    knots = np.asarray(knots)
    step = knots[1] - knots[0]
    return np.maximum(0.0, 1.0 - np.abs(r[:, None] - knots[None, 1:]) / step)


def _sigma_features(shared: np.ndarray, hats: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(N, len(FEATURES)) columns of a sigma's factor."""
    u = shared[:, SHARED_NAMES.index("u")][:, None]  # 0 for a zoomed reading
    return np.column_stack([shared, hats, u * hats, u**2 * hats, s, s**2])


def _sigma_columns(j: int) -> np.ndarray:
    """Which columns of `FEATURES` parameter j's factor is fitted on (the others: 0)."""
    used = np.ones(len(FEATURES), dtype=bool)
    if j not in HATTED:
        used[SHARED : SHARED + len(HATS) + len(WIDE_HATS)] = False
    else:  # the hats are its functions of r: a polynomial beside them is degenerate
        used[[FEATURES.index(n) for n in POLY_R]] = False
    return used


def _bias_features(
    values: np.ndarray, windows: np.ndarray, zoomed: np.ndarray, geometry: str
) -> np.ndarray:
    """(N, len(BIAS_FEATURES)) columns of the mean-error correction."""
    shared = features(values, windows, zoomed, geometry)
    hats = _hats(values, geometry)
    zoom = np.asarray(zoomed, dtype=np.float64)[:, None]
    zoom_c = shared[:, SHARED_NAMES.index("zoomed c")][:, None]  # c of a zoomed reading, else 0
    fine = _hats(values, geometry, ZOOMED_KNOTS)
    return np.column_stack([shared, hats, zoom * fine, zoom_c * hats])


def _log_sigma(sigmas: np.ndarray, windows: np.ndarray, j: int) -> np.ndarray:
    """log of parameter j's sigma, relative to the window width for B0 and dB (j < 2)."""
    windows = np.asarray(windows, dtype=np.float64)
    scale = np.maximum(windows[:, 1] - windows[:, 0], 1e-300) if j < 2 else 1.0
    return np.log(np.maximum(np.asarray(sigmas, dtype=np.float64)[:, j] / scale, 1e-300))


def _of_param(windows: np.ndarray, zoomed: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Parameter j's windows (N, 2) and zoom flags (N,): `windows` is (N, 2), one window
    for every parameter, or (N, P, 2), each parameter's own (`infer.read_zoomed`); so is
    `zoomed`, (N,) or (N, P)."""
    windows = np.asarray(windows, dtype=np.float64)
    zoomed = np.asarray(zoomed)
    return (windows[:, j] if windows.ndim == 3 else windows), (
        zoomed[:, j] if zoomed.ndim == 2 else zoomed
    )


def _closest_factor(z: np.ndarray) -> float:
    """The factor f that puts the fractions of z inside f and 2 f as deep inside the
    coverage bands `BANDS` as it can: the larger of the two distances from a band's
    centre, each in units of its half-width, is smallest (ties broken by the distance
    from ONE_SIGMA and TWO_SIGMA). For Gaussian errors this is about the Gaussian
    factor; where the errors have lighter tails than a Gaussian (B0's: ±2σ holds 97-98 %
    when ±1σ holds 68 %), one factor cannot give both nominal fractions, and a least-
    squares compromise left ±2σ outside its band on most data sets."""
    q = float(np.quantile(z, ONE_SIGMA))
    fs = q * np.linspace(0.80, 1.20, 401)
    z = np.sort(z)
    c1 = np.searchsorted(z, fs, side="right") / len(z)
    c2 = np.searchsorted(z, 2 * fs, side="right") / len(z)
    (lo1, hi1), (lo2, hi2) = BANDS
    worst = np.maximum(
        np.abs(c1 - (lo1 + hi1) / 2) / ((hi1 - lo1) / 2),
        np.abs(c2 - (lo2 + hi2) / 2) / ((hi2 - lo2) / 2),
    )
    tie = (c1 - ONE_SIGMA) ** 2 + (c2 - TWO_SIGMA) ** 2
    return float(fs[np.argmin(worst + 1e-3 * tie)])


def fit_calibration(
    values: np.ndarray,
    sigmas: np.ndarray,
    truth: np.ndarray,
    windows: np.ndarray,
    zoomed: np.ndarray,
    geometry: str,
) -> dict:
    """The calibration from predictions (values, sigmas: N x 3, physical units), the
    true values, the windows read (N x 2) and each prediction's zoom state.

    Returns a JSON-able dict: ``weights[param][feature]``, the feature names, the
    geometry, each parameter's centre of s and its ``s_hi``. Its factors multiply the
    sigmas `values`/`sigmas` came with.
    """
    from scipy.optimize import minimize

    values, sigmas, truth = (np.asarray(a, dtype=np.float64) for a in (values, sigmas, truth))
    if not (values.shape == sigmas.shape == truth.shape and values.ndim == 2):
        raise ValueError("values, sigmas and truth must be arrays of one shape (N, 3)")
    if not (np.isfinite(sigmas) & (sigmas > 0)).all():
        raise ValueError("every sigma must be finite and > 0 (a model with uncertainty)")
    if len(values) < 10 * len(FEATURES):
        raise ValueError(f"at least {10 * len(FEATURES)} predictions to fit on (got {len(values)})")
    bias = _fit_bias(values, truth, windows, zoomed, geometry)
    values = _debias(bias, geometry, values, windows, zoomed)
    weights, centres, s_hi = [], [], []
    hats = _hats(values, geometry)
    for j in range(values.shape[1]):
        windows_j, zoomed_j = _of_param(windows, zoomed, j)
        shared = features(values, windows_j, zoomed_j, geometry)
        err, log_s = np.abs(values[:, j] - truth[:, j]), np.log(sigmas[:, j])
        s_j = _log_sigma(sigmas, windows_j, j)
        centre = float(np.mean(s_j))
        used = _sigma_columns(j)
        f = _sigma_features(shared, hats, s_j - centre)[:, used]

        power = 1 if j in LAPLACE_FIT else 2

        def nll(w: np.ndarray, err=err, log_s=log_s, f=f, k=power) -> tuple[float, np.ndarray]:
            # Gaussian (k = 2) or Laplace (k = 1) negative log-likelihood, constants left out
            log_sigma = log_s + f @ w
            # finite for any probe of the line search (an inf times a 0 feature is NaN)
            q = np.minimum((err * np.exp(np.minimum(-log_sigma, 300.0))) ** k, 1e150)
            return float(np.mean(q / k + log_sigma)), f.T @ (1.0 - q) / len(err)

        bounds = [(-20.0, 20.0)] * f.shape[1]  # finite even if every error were 0
        with np.errstate(over="ignore"):  # a line-search probe may overflow; it is rejected
            w = minimize(nll, np.zeros(f.shape[1]), jac=True, method="L-BFGS-B", bounds=bounds).x
        z = err / np.exp(log_s + f @ w)
        w[0] += math.log(_closest_factor(z))
        full = np.zeros(len(FEATURES))
        full[used] = w
        weights.append([float(v) for v in full])
        centres.append(centre)
        s_hi.append(float(np.quantile(s_j - centre, S_HI_QUANTILE)))
    return {
        "version": CALIBRATION_VERSION,
        "kind": "log-linear",
        "geometry": geometry,
        "features": list(FEATURES),
        "bias_features": list(BIAS_FEATURES),
        "weights": weights,
        "s_centres": centres,
        "s_hi": s_hi,
        "bias": bias,
    }


def _fit_bias(
    values: np.ndarray, truth: np.ndarray, windows: np.ndarray, zoomed: np.ndarray, geometry: str
) -> list:
    """Per parameter: None, or (for `DEBIASED`) the weights w of the correction
    value + dB * (w . f) (B0, dB: `IN_LINE_WIDTHS`) or value + w . f (p), f its
    `BIAS_FEATURES` (those it does not use at weight 0), that fits the truth in least
    squares, with the correction's range over this draw (`BIAS_CLIP_QUANTILES`) that
    bounds it elsewhere. For dB this is dB * (1 + w . f): a relative correction, fitted
    as the relative error weighted by dB^2 (the relative error alone is skewed where dB
    is noisy); for B0 a shift in units of the line's width, fitted on the error in line
    widths (`FIT_IN_LINE_WIDTHS`)."""
    out: list = [None] * values.shape[1]
    for j, names in DEBIASED.items():
        if j >= values.shape[1]:
            continue
        f = _bias_features(values, *_of_param(windows, zoomed, j), geometry)
        used = np.isin(BIAS_FEATURES, names)
        err = truth[:, j] - values[:, j]
        if j in FIT_IN_LINE_WIDTHS:  # the error in line widths, every line alike
            a, b = f[:, used], err / np.maximum(values[:, 1], 1e-300)
        elif j in IN_LINE_WIDTHS:  # the relative error, weighted by dB^2
            a, b = f[:, used] * values[:, 1:2], err
        else:
            a, b = f[:, used], err
        w = np.zeros(f.shape[1])
        w[used] = np.linalg.lstsq(a, b, rcond=None)[0]
        lo, hi = np.quantile(f @ w, BIAS_CLIP_QUANTILES)
        out[j] = {"weights": [float(v) for v in w], "clip": [float(lo), float(hi)]}
    return out


def apply_bias(
    calibration: dict | None, values: np.ndarray, windows: np.ndarray, zoomed: np.ndarray
) -> np.ndarray:
    """`values` with the fitted correction of their mean error applied (a copy):
    parameter j becomes value + dB * clip(w_j . f) (B0, dB) or value + clip(w_j . f)
    (p) for the parameters the table corrects (`DEBIASED`: dB, which the networks read
    0.3-0.7 % low on the simulated lines, more near the fold and on wide lines; B0, off
    by a few thousandths of dB in a way that rises and falls with p; p, whose mean error
    rises and falls with p, between 0.1 and 0.9 p_fold only), the features `f` and dB
    those of the uncorrected values. Unchanged without a table."""
    if not calibration:
        return np.array(values, dtype=np.float64)
    calibration = _checked(calibration)
    return _debias(calibration["bias"], calibration["geometry"], values, windows, zoomed)


def _debias(
    bias: list, geometry: str, values: np.ndarray, windows: np.ndarray, zoomed: np.ndarray
) -> np.ndarray:
    raw = np.asarray(values, dtype=np.float64)
    values = raw.copy()
    for j, b in enumerate(bias):
        if b is None:
            continue
        f = _bias_features(raw, *_of_param(windows, zoomed, j), geometry)
        corr = np.clip(f @ np.asarray(b["weights"], dtype=np.float64), *b["clip"])
        values[:, j] = raw[:, j] + (raw[:, 1] * corr if j in IN_LINE_WIDTHS else corr)
    return values


def _checked(calibration: dict) -> dict:
    if (
        calibration.get("version") != CALIBRATION_VERSION
        or calibration.get("features") != list(FEATURES)
        or calibration.get("bias_features") != list(BIAS_FEATURES)
    ):
        raise ValueError(
            f"sigma_calibration: version {calibration.get('version')!r} is not "
            f"{CALIBRATION_VERSION} (written by another dysonian_pl version, for another way "
            "of reading spectra): fit it again with python -m dysonian_pl calibrate"
        )
    return calibration


def _beyond(calibration: dict, sigmas: np.ndarray, windows: np.ndarray, j: int) -> np.ndarray:
    s_j = _log_sigma(sigmas, windows, j) - calibration["s_centres"][j]
    return s_j > calibration["s_hi"][j]


def apply_calibration(
    calibration: dict | None,
    values: np.ndarray,
    sigmas: np.ndarray,
    windows: np.ndarray,
    zoomed: np.ndarray,
) -> np.ndarray:
    """`sigmas` multiplied by the fitted factors (a copy; unchanged when `calibration`
    is None); a sigma beyond the fitting draw's (`beyond_range`), and every sigma of a
    line whose p lies outside the networks' answers on it (`outside_answers`), is never
    made smaller."""
    sigmas = np.array(sigmas, dtype=np.float64)
    if not calibration:
        return sigmas
    calibration = _checked(calibration)
    w = np.asarray(calibration["weights"], dtype=np.float64)
    raw = sigmas.copy()
    outside = outside_answers(values, calibration["geometry"])
    hats = _hats(values, calibration["geometry"])
    for j, centre in enumerate(calibration["s_centres"]):
        windows_j, zoomed_j = _of_param(windows, zoomed, j)
        shared = features(values, windows_j, zoomed_j, calibration["geometry"])
        s_j = _log_sigma(raw, windows_j, j) - centre
        sigmas[:, j] = raw[:, j] * np.exp(_sigma_features(shared, hats, s_j) @ w[j])
        far = (s_j > calibration["s_hi"][j]) | outside  # as `_beyond`
        sigmas[far, j] = np.maximum(sigmas[far, j], raw[far, j])
    return sigmas


def outside_answers(values: np.ndarray, geometry: str) -> np.ndarray:
    """(N,) bool: which lines were read with p / p_fold outside `R_RANGE`, where the
    networks never answered on the simulated lines the calibration is fitted on (the
    thin-sample end, p near 0 or below, and beyond the fold). There every feature is
    that of the nearest simulated lines, and `apply_calibration` keeps each sigma at
    least the network's own: on the p-near-0 lines of shared/ the calibrated sigma of B0
    had put least squares 2.7-3 sigmas away (strong1, BDPA)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] < 3:
        return np.zeros(len(values), dtype=bool)
    r = values[:, 2] / p_fold(geometry)
    return ~((r >= R_RANGE[0]) & (r <= R_RANGE[1]))  # NaN counts as outside


def beyond_range(calibration: dict | None, sigmas: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(N, P) bool: which of the network's own (uncalibrated) `sigmas` lie beyond those of
    the calibration's fitting draw (its ``s_hi``): a line the network is less sure of than
    of 99.9 % of the simulated lines. All False without a calibration."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    out = np.zeros(sigmas.shape, dtype=bool)
    if not calibration:
        return out
    calibration = _checked(calibration)
    for j in range(len(calibration["s_centres"])):
        windows_j, _ = _of_param(windows, np.zeros(len(sigmas), dtype=bool), j)
        out[:, j] = _beyond(calibration, sigmas, windows_j, j)
    return out


def calibrate_model(model, n: int, seed: int, rounds: int | None = None) -> tuple[dict, dict]:
    """Fit the table for a window-agnostic model on `n` fresh spectra of its own ranges
    (dB log-uniform over them, whatever `sim.dB_narrow` the model was trained with;
    indices from 2 * 10**9: in no training, validation, test or `sets` split), read as
    `infer` reads them. Returns (table, summary) where the summary has the coverage
    before and after on a second, independent draw of `n` spectra."""
    from .infer import ZOOM_ROUNDS, predict_zoomed, zoomed_flags
    from .simulate import field_axis, simulate

    if not getattr(model.sim, "relative_window", False):
        raise ValueError("calibrate: only window-agnostic models (sim.relative_window) zoom")
    if not getattr(model, "uncertainty", False):
        raise ValueError(
            "calibrate: the model has no uncertainty head (train with --model.uncertainty true)"
        )
    rounds = ZOOM_ROUNDS if rounds is None else rounds
    axis = field_axis(model.sim)
    width = axis[-1] - axis[0]

    # the lines users bring, one log-uniform range of widths, not the training's weighting
    # of them (sim.dB_narrow): the table must hold for narrow lines as for the rest
    draw = model.sim.replace(dB_narrow=None)

    def read(offset: int):
        x, y = simulate(draw, seed, offset + np.arange(n))
        values, sigmas, windows = predict_zoomed(
            model, axis, x.numpy(), rounds=rounds, calibrated=False
        )
        zoomed = zoomed_flags(windows, width)  # (N, 3): per parameter
        return values, sigmas, y.numpy().astype(np.float64), windows, zoomed

    fit_set, check_set = read(2 * 10**9), read(3 * 10**9)
    table = fit_calibration(*fit_set, model.sim.geometry)
    values, sigmas, truth, windows, zoomed = check_set
    err = np.abs(values - truth)
    fixed = apply_bias(table, values, windows, zoomed)
    err_after = np.abs(fixed - truth)
    after = apply_calibration(table, fixed, sigmas, windows, zoomed)
    summary = {
        "n": n,
        "seed": seed,
        "zoomed_fraction": zoomed.mean(axis=0).tolist(),
        "before": {
            "cover1": (err <= sigmas).mean(0).tolist(),
            "cover2": (err <= 2 * sigmas).mean(0).tolist(),
            "mae": err.mean(0).tolist(),
        },
        "after": {
            "cover1": (err_after <= after).mean(0).tolist(),
            "cover2": (err_after <= 2 * after).mean(0).tolist(),
            "mae": err_after.mean(0).tolist(),
        },
    }
    return table, summary


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys
    from pathlib import Path

    ap = argparse.ArgumentParser(
        prog="python -m dysonian_pl calibrate",
        description="Fit the sigma calibration of a window-agnostic model as infer reads "
        "spectra (zoom included) and write a calibrated copy of its checkpoint.",
    )
    ap.add_argument(
        "--ckpt",
        required=True,
        help="checkpoint of a window-agnostic model with uncertainty, or an ensemble "
        "manifest (.ensemble.json) of such models",
    )
    ap.add_argument(
        "--out",
        required=True,
        help="calibrated checkpoint (or manifest) to write (may equal --ckpt)",
    )
    ap.add_argument(
        "--n",
        type=int,
        default=40000,
        help="spectra to fit on, and as many to check on (default 40000)",
    )
    ap.add_argument("--seed", type=int, default=777, help="simulation seed (default 777)")
    args = ap.parse_args(argv)
    if args.n < 1000:
        print(f"error: --n: at least 1000 spectra (got {args.n})", file=sys.stderr)
        return 2

    from .atomic import atomic_open
    from .ensemble import is_manifest, rewrite_calibration
    from .infer import CheckpointError, load_model, read_checkpoint

    manifest = is_manifest(args.ckpt)
    if manifest != is_manifest(args.out):
        print(
            f"error: --out {args.out}: an ensemble's calibration goes into a manifest "
            "(.ensemble.json), a checkpoint's into a checkpoint (.ckpt): give --ckpt and "
            "--out of one kind",
            file=sys.stderr,
        )
        return 2
    try:
        ckpt = None if manifest else read_checkpoint(args.ckpt)
        model = load_model(args.ckpt)
        table, summary = calibrate_model(model, args.n, args.seed)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: --ckpt {args.ckpt}: {e}", file=sys.stderr)
        return 2
    table["fitted_on"] = {
        "n": args.n,
        "seed": args.seed,
        "zoomed_fraction": summary["zoomed_fraction"],
    }
    out = Path(args.out)
    names = list(model.names)
    if manifest:
        rewrite_calibration(args.ckpt, out, table)
    else:
        import torch

        ckpt["dysonian_pl"] = {**ckpt["dysonian_pl"], "sigma_calibration": table}
        with atomic_open(out, "wb") as fh:
            torch.save(ckpt, fh)
    print(
        f"{out}: sigma calibration (log-linear in the line's position in the window read, "
        "its width, p / p_fold and its own sigma; "
        + ", ".join(names[j] for j, b in enumerate(table["bias"]) if b is not None)
        + " corrected for its mean error there) (read zoomed: "
        + ", ".join(
            f"{n} {z:.0%}" for n, z in zip(model.names, summary["zoomed_fraction"], strict=True)
        )
        + ")"
    )
    print(
        "| check draw | "
        + " | ".join(f"±1σ {n}" for n in names)
        + " | "
        + " | ".join(f"±2σ {n}" for n in names)
        + " | "
        + " | ".join(f"MAE {n}" for n in names)
        + " |"
    )
    print("|" + " --- |" * (1 + 3 * len(names)))
    for key in ("before", "after"):
        s = summary[key]
        print(
            f"| {key} | "
            + " | ".join(f"{v:.3f}" for v in s["cover1"] + s["cover2"])
            + " | "
            + " | ".join(f"{v:.4g}" for v in s["mae"])
            + " |"
        )
    print(json.dumps(table["weights"]))
    return 0

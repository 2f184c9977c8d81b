"""S-step: supervised projection of the local controllers onto the global policy (ALGORITHM.md §8).

Data (S = M*N samples, R = S*T rows): observations ``o_r``, targets ``mu*_r``
(new local controller mean ``K_t x + k_t``), local precisions ``P_r = Sigma_t^{-1}``
and weights ``w_r``.

Normalisation (§8.2), once per run: ``o_hat = o * scale + bias`` with
``scale = 1/max(std, 1e-3)`` and ``bias = -mean(o * scale)`` over the first
S-step's rows, frozen afterwards.

Weight processing (§8.3)::

    w <- w * R / sum(w);   mu_w = median{w : w > 0.01};   w <- min(w, 2 mu_w);   w <- w / mu_w
    P~_r = w_r P_r

Loss (§8.4) on a minibatch ``b`` of ``B`` rows, ``theta`` = all weights and biases::

    L(theta) = 1/(2B) sum_{r in b} (mu_theta(o_hat_r) - mu*_r)^T P~_r (mu_theta(o_hat_r) - mu*_r)
               + (wd/2) ||theta||^2

minimised by Adam with classic L2 weight decay (``torch.optim.Adam(weight_decay=wd)``,
not AdamW: ``wd * theta`` is added to the gradient before the moment updates),
lr 1e-3, betas (0.9, 0.999), eps 1e-8.  Adam moments and step counter persist
across S-steps.  Minibatches: one permutation ``perm`` of the R rows per
S-step, ``nb = floor(R/B)``; iteration ``i`` uses ``perm[(i mod nb) B : (i mod nb) B + B]``.

Policy variance (§8.5), with the *un-weighted* precisions and the processed weights::

    A = (sum_r P_r + 2 R ent_reg 1 1^T) / sum_r w_r,     var_j = 1 / A_jj

This is the only module of the package that imports torch.  Training runs in
float64 on the CPU with a hand-written backward pass of the small ReLU MLP
(checked against autograd in the tests); each affine layer is held as one
augmented matrix ``[W | b]`` of shape ``[out, in+1]``, which is exact for Adam
because Adam and the L2 decay act element-wise on every parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from gps_core.policy.policy_net import PolicyParams, normalisation
from gps_core.configs import SStepConfig

WEIGHT_MEDIAN_THRESHOLD = 1e-2


@dataclass
class AdamState:
    """Adam optimiser state carried across S-steps.

    exp_avg, exp_avg_sq: one array per parameter, order ``W0, b0, W1, b1, ...``
    (same shapes as the parameters).  step: number of Adam steps taken so far.
    """

    exp_avg: list[np.ndarray]
    exp_avg_sq: list[np.ndarray]
    step: int


def process_weights(weight: np.ndarray) -> np.ndarray:
    """§8.3 weight processing; ``weight: [S, T] -> [S, T]`` (any shape works, R = weight.size).

    ``w <- w R / sum(w)``; ``mu_w = median{w > 0.01}``; ``w <- min(w, 2 mu_w)``; ``w <- w / mu_w``.
    Returns a new array.  With all weights equal (MDGPS) every weight becomes exactly 1.
    """
    w = np.array(weight, dtype=np.float64, copy=True)
    if w.size == 0:
        raise ValueError("empty weight array")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    total = w.sum()
    if not total > 0:
        raise ValueError("weights sum to zero")
    w *= w.size / total
    above = w[w > WEIGHT_MEDIAN_THRESHOLD]
    if above.size == 0:
        raise ValueError("no renormalised weight exceeds 0.01; the median is undefined")
    mu_w = np.median(above)
    w = np.minimum(w, 2.0 * mu_w)
    w /= mu_w
    return w


def policy_variance(precision: np.ndarray, processed_weight: np.ndarray, ent_reg: float) -> np.ndarray:
    """§8.5 diagonal policy variance.

    precision: ``[S, T, dU, dU]`` un-weighted local precisions; processed_weight: ``[S, T]``
    (output of :func:`process_weights`).  Returns ``var: [dU]`` with
    ``A = (sum P + 2 R ent_reg 1 1^T) / sum w`` and ``var_j = 1 / A_jj``.
    """
    precision = np.asarray(precision, dtype=np.float64)
    dU = precision.shape[-1]
    rows = precision.reshape(-1, dU, dU)
    n_rows = rows.shape[0]
    A = (rows.sum(axis=0) + 2.0 * n_rows * float(ent_reg) * np.ones((dU, dU))) / np.sum(processed_weight)
    return 1.0 / np.diag(A).copy()


def minibatch_indices(perm: np.ndarray, batch_size: int, iteration: int) -> np.ndarray:
    """Rows used at ``iteration`` i (§8.4): ``perm[(i B mod nb B) : ... + B]``, ``nb = floor(len(perm) / B)``.

    perm: ``[R]`` -> ``[B]``.  (Reference helper; training pre-builds the ``nb`` batches once.)
    """
    nb = len(perm) // batch_size
    if nb == 0:
        raise ValueError(f"need at least batch_size={batch_size} rows, got {len(perm)}")
    start = (iteration * batch_size) % (nb * batch_size)
    return perm[start : start + batch_size]


# --------------------------------------------------------------------------- helpers


def _augment(flat: list[np.ndarray]) -> list[np.ndarray]:
    """``[W0, b0, W1, b1, ...]`` -> per layer ``[W_i | b_i]: [out, in+1]`` (new arrays)."""
    return [
        np.concatenate([np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)[:, None]], axis=1)
        for w, b in zip(flat[0::2], flat[1::2])
    ]


def _split(aug: list[np.ndarray]) -> list[np.ndarray]:
    """Inverse of :func:`_augment`, flattened to ``[W0, b0, W1, b1, ...]`` (copies)."""
    out = []
    for a in aug:
        out.append(np.ascontiguousarray(a[:, :-1]))
        out.append(np.ascontiguousarray(a[:, -1]))
    return out


def _check_inputs(params, adam, obs, target, precision, weight, cfg):
    if cfg.iterations < 0:
        raise ValueError("cfg.iterations must be >= 0")
    if cfg.batch_size <= 0:
        raise ValueError("cfg.batch_size must be positive")
    dO, dU = params.dO, params.dU
    if obs.ndim != 3 or obs.shape[2] != dO:
        raise ValueError(f"obs must be [S, T, {dO}], got {obs.shape}")
    S, T = obs.shape[:2]
    if target.shape != (S, T, dU):
        raise ValueError(f"target must be {(S, T, dU)}, got {target.shape}")
    if precision.shape != (S, T, dU, dU):
        raise ValueError(f"precision must be {(S, T, dU, dU)}, got {precision.shape}")
    if weight.shape != (S, T):
        raise ValueError(f"weight must be {(S, T)}, got {weight.shape}")
    if S * T < cfg.batch_size:
        raise ValueError(f"need at least batch_size={cfg.batch_size} rows, got {S * T}")
    if adam is not None:
        shapes = [a.shape for pair in zip(params.weights, params.biases) for a in pair]
        if (
            len(adam.exp_avg) != len(shapes)
            or len(adam.exp_avg_sq) != len(shapes)
            or any(np.shape(m) != s for m, s in zip(adam.exp_avg, shapes))
            or any(np.shape(v) != s for v, s in zip(adam.exp_avg_sq, shapes))
        ):
            raise ValueError("AdamState does not match the network parameter shapes")
        if adam.step < 0:
            raise ValueError("AdamState.step must be >= 0")


def _adam_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    cfg: SStepConfig,
) -> None:
    """One Adam update with classic L2 weight decay, in place on flat float64 buffers.

    Same arithmetic, in the same order, as ``torch.optim.Adam(weight_decay=wd)``
    (single-tensor path, ``amsgrad=False``)::

        g = grad + wd * param
        m <- lerp(m, g, 1 - beta1);   v <- beta2 v + (1 - beta2) g^2
        param <- param - lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)

    ``step`` is the 1-based count including this update.  Written out instead of
    calling the optimiser class because its per-call Python overhead (and the
    lazy ``torch._dynamo`` import it triggers) dominates the cost of this tiny net.
    """
    g = grad.add(param, alpha=cfg.weight_decay) if cfg.weight_decay != 0 else grad
    exp_avg.lerp_(g, 1 - cfg.beta1)
    exp_avg_sq.mul_(cfg.beta2).addcmul_(g, g, value=1 - cfg.beta2)
    bias_correction1 = 1 - cfg.beta1**step
    bias_correction2 = 1 - cfg.beta2**step
    step_size = cfg.lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(cfg.eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


class _TorchSettings:
    """Single-threaded torch for the duration of a ``with`` block; restores afterwards.

    The operations used (dense matmuls and elementwise updates on the CPU) are
    deterministic for a fixed thread count, so one thread gives bit-identical
    results. torch.use_deterministic_algorithms is not called: it adds nothing on
    the CPU and its first call imports torch._inductor (about 2 s per process).
    """

    def __enter__(self):
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self._threads)
        return False


# --------------------------------------------------------------------------- training


def train_policy(
    params: PolicyParams,
    adam: AdamState | None,
    obs: np.ndarray,
    target: np.ndarray,
    precision: np.ndarray,
    weight: np.ndarray,
    cfg: SStepConfig,
    rng: np.random.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[PolicyParams, AdamState, np.ndarray]:
    """One S-step (§8.2-§8.5).

    obs: ``[S, T, dO]``, target: ``[S, T, dU]``, precision: ``[S, T, dU, dU]``, weight: ``[S, T]``.
    params: current network (normalisation computed from ``obs`` and frozen if
    ``not params.normalised``, else kept); adam: state to continue (None = fresh);
    rng: used exactly once, for ``rng.permutation(S*T)``.
    progress: optional ``progress(done, total)`` called about 100 times during the
    gradient steps and once at the end (``done == total == cfg.iterations``); it
    does not change the result.

    Returns ``(new_params, new_adam, losses)`` with ``new_params.normalised = True``,
    the §8.5 variance, and ``losses: [cfg.iterations]`` the precision-weighted
    data term ``1/(2B) sum (mu - mu*)^T P~ (mu - mu*)`` of each iteration's
    minibatch evaluated before that iteration's update (weight-decay term excluded).
    No input is modified.
    """
    obs = np.asarray(obs, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    _check_inputs(params, adam, obs, target, precision, weight, cfg)

    S, T, dO = obs.shape
    dU = params.dU
    R = S * T
    B = int(cfg.batch_size)
    nb = R // B

    # §8.2 normalisation (frozen after the first S-step).
    if params.normalised:
        obs_scale = np.array(params.obs_scale, dtype=np.float64, copy=True)
        obs_bias = np.array(params.obs_bias, dtype=np.float64, copy=True)
    else:
        obs_scale, obs_bias = normalisation(obs)

    # §8.3 weights and effective precision.
    w = process_weights(weight)
    prc_w = precision * w[..., None, None]
    # x^T P x = x^T sym(P) x; the gradient of the loss wrt the mean is sym(P~) d / B.
    prc_grad = 0.5 * (prc_w + np.swapaxes(prc_w, -1, -2)) / B

    # §8.5 variance (independent of the network).
    var = policy_variance(precision, w, cfg.ent_reg)

    # Minibatch layout: one permutation, cycling over its first nb*B entries.
    perm = rng.permutation(R)
    idx = np.stack([minibatch_indices(perm, B, j) for j in range(nb)])  # [nb, B]; iteration i uses idx[i % nb]
    o_hat = obs.reshape(R, dO) * obs_scale + obs_bias
    x_rows = np.concatenate([o_hat, np.ones((R, 1))], axis=1)

    n_layers = len(params.weights)
    aug0 = _augment([a for pair in zip(params.weights, params.biases) for a in pair])
    if adam is None:
        m0 = [np.zeros_like(a) for a in aug0]
        v0 = [np.zeros_like(a) for a in aug0]
        step0 = 0
    else:
        m0 = _augment(adam.exp_avg)
        v0 = _augment(adam.exp_avg_sq)
        step0 = int(adam.step)

    shapes = [a.shape for a in aug0]
    sizes = [a.size for a in aug0]
    f64 = torch.float64
    with _TorchSettings(), torch.no_grad():
        X = torch.tensor(x_rows[idx], dtype=f64)  # [nb, B, dO+1]
        Y = torch.tensor(target.reshape(R, dU)[idx], dtype=f64)  # [nb, B, dU]
        PG = torch.tensor(prc_grad.reshape(R, dU, dU)[idx], dtype=f64)  # [nb, B, dU, dU]

        # All parameters, gradients and Adam moments live in flat buffers; the
        # per-layer [out, in+1] matrices are views into them.
        theta = torch.tensor(np.concatenate([a.ravel() for a in aug0]), dtype=f64)
        exp_avg = torch.tensor(np.concatenate([a.ravel() for a in m0]), dtype=f64)
        exp_avg_sq = torch.tensor(np.concatenate([a.ravel() for a in v0]), dtype=f64)
        grad = torch.zeros_like(theta)
        Ws = [t.view(s) for t, s in zip(theta.split(sizes), shapes)]
        Gs = [t.view(s) for t, s in zip(grad.split(sizes), shapes)]
        W_in = [Wt[:, :-1] for Wt in Ws]  # weight part without the bias column (for backprop)
        # Hidden activations with a trailing column of ones (bias input of the next layer).
        H_aug = [torch.ones(B, Wt.shape[0] + 1, dtype=f64) for Wt in Ws[:-1]]
        H = [h[:, :-1] for h in H_aug]
        losses = torch.empty(cfg.iterations, dtype=f64)

        step = step0
        report_every = max(1, cfg.iterations // 100)
        for it in range(cfg.iterations):
            if progress is not None and it % report_every == 0:
                progress(it, cfg.iterations)
            j = it % nb
            x = X[j]
            # forward
            pre = []
            inp = x
            for layer in range(n_layers - 1):
                a = inp.mm(Ws[layer].t())
                torch.clamp_min(a, 0.0, out=H[layer])
                pre.append(a)
                inp = H_aug[layer]
            d = inp.mm(Ws[-1].t()).sub_(Y[j])  # mu - mu*, [B, dU]
            g = torch.bmm(PG[j], d.unsqueeze(2)).squeeze(2)  # dL/dmu = sym(P~) d / B
            torch.dot(g.reshape(-1), d.reshape(-1), out=losses[it])  # 2 * loss
            # backward (ReLU derivative 0 at 0, as torch)
            for layer in range(n_layers - 1, -1, -1):
                torch.mm(g.t(), H_aug[layer - 1] if layer > 0 else x, out=Gs[layer])
                if layer > 0:
                    g = g.mm(W_in[layer]).mul_(pre[layer - 1] > 0)
            step += 1
            _adam_step(theta, grad, exp_avg, exp_avg_sq, step, cfg)
        losses.mul_(0.5)
        if progress is not None:
            progress(cfg.iterations, cfg.iterations)

        def unflatten(t: torch.Tensor) -> list[np.ndarray]:
            return [c.numpy().reshape(s).copy() for c, s in zip(t.split(sizes), shapes)]

        aug_new, m_new, v_new = unflatten(theta), unflatten(exp_avg), unflatten(exp_avg_sq)
        loss_np = losses.numpy().copy()

    flat = _split(aug_new)
    new_params = PolicyParams(
        weights=flat[0::2],
        biases=flat[1::2],
        obs_scale=obs_scale,
        obs_bias=obs_bias,
        var=var,
        normalised=True,
    )
    new_adam = AdamState(exp_avg=_split(m_new), exp_avg_sq=_split(v_new), step=step)
    return new_params, new_adam, loss_np

"""UniPC (Zhao et al. 2023) multistep predictor-corrector as ComfyUI runs it (`uni_pc`, `uni_pc_bh2`).

ComfyUI's arrangement: the "time" variable is sigma itself; the solver works on the VP sample
x_vp = x / sqrt(1 + sigma^2) with the data prediction (predict_x0) and B(h) = h ('bh1') or
expm1(h) ('bh2'); order = min(3, steps - 1), lower orders at the start and at the end; a final
sigma of 0 is replaced by 0.001 and the last update runs the predictor only; the result is
mapped back to k-diffusion space by dividing by alpha(sigma_last).
"""

from __future__ import annotations

import torch

from .samplers_k import Callback, Denoiser


def _log_alpha(sigma: torch.Tensor) -> torch.Tensor:
    """log(alpha) of a k-diffusion sigma: 0.5 * log(1 / (sigma^2 + 1))."""
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(_log_alpha(sigma))


def _std(sigma: torch.Tensor) -> torch.Tensor:
    """The VP noise std sqrt(1 - alpha^2)."""
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    """Half-log-SNR log(alpha) - log(std)."""
    log_mean = _log_alpha(sigma)
    log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean))
    return log_mean - log_std


def _expand(v: torch.Tensor, dims: int) -> torch.Tensor:
    return v[(...,) + (None,) * (dims - 1)]


class _UniPC:
    """State-free helper: model evaluation in VP space and one UniPC-B(h) update."""

    def __init__(self, denoise: Denoiser, variant: str) -> None:
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
        self.denoise = denoise
        self.variant = variant

    def data_prediction(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 estimate from the VP sample x at sigma t (B,), through the k-diffusion denoiser."""
        sigma = t.view(t.shape[:1] + (1,) * (x.ndim - 1))
        x_k = x * ((sigma**2 + 1.0) ** 0.5)
        eps = (x_k - self.denoise(x_k, t)) / sigma
        dims = x.dim()
        alpha_t, sigma_t = _alpha(t), _std(t)
        return (x - _expand(sigma_t, dims) * eps) / _expand(alpha_t, dims)

    def update(
        self,
        x: torch.Tensor,
        model_prev_list: list[torch.Tensor],
        t_prev_list: list[torch.Tensor],
        t: torch.Tensor,
        order: int,
        use_corrector: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predictor (and corrector) from the last `order` model outputs to time t; returns (x_t, model_t)."""
        if len(t.shape) == 0:
            t = t.view(-1)
        if order > len(model_prev_list):
            raise ValueError(f"order {order} needs {order} past model outputs, have {len(model_prev_list)}")
        dims = x.dim()
        t_prev_0 = t_prev_list[-1]
        lambda_prev_0 = _lambda(t_prev_0)
        lambda_t = _lambda(t)
        model_prev_0 = model_prev_list[-1]
        sigma_prev_0, sigma_t = _std(t_prev_0), _std(t)
        alpha_t = torch.exp(_log_alpha(t))
        h = lambda_t - lambda_prev_0

        rks = []
        D1s: list[torch.Tensor] | torch.Tensor | None = []
        for i in range(1, order):
            t_prev_i = t_prev_list[-(i + 1)]
            model_prev_i = model_prev_list[-(i + 1)]
            lambda_prev_i = _lambda(t_prev_i)
            rk = ((lambda_prev_i - lambda_prev_0) / h)[0]
            rks.append(rk)
            D1s.append((model_prev_i - model_prev_0) / rk)
        rks.append(1.0)
        rks_t = torch.tensor(rks, device=x.device)

        hh = -h[0]  # predict_x0
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        B_h = hh if self.variant == "bh1" else torch.expm1(hh)
        R = []
        b = []
        factorial_i = 1
        for i in range(1, order + 1):
            R.append(torch.pow(rks_t, i - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        R_t = torch.stack(R)
        b_t = torch.tensor(b, device=x.device)

        rhos_p = None
        if len(D1s) > 0:
            D1s = torch.stack(D1s, dim=1)  # (B, K, C, H, W)
            rhos_p = torch.tensor([0.5], device=b_t.device) if order == 2 else torch.linalg.solve(R_t[:-1, :-1], b_t[:-1])
        else:
            D1s = None

        rhos_c = None
        if use_corrector:
            rhos_c = torch.tensor([0.5], device=b_t.device) if order == 1 else torch.linalg.solve(R_t, b_t)

        x_t_ = _expand(sigma_t / sigma_prev_0, dims) * x - _expand(alpha_t * h_phi_1, dims) * model_prev_0
        if D1s is not None:
            pred_res = torch.tensordot(D1s, rhos_p, dims=([1], [0]))
        else:
            pred_res = 0
        x_t = x_t_ - _expand(alpha_t * B_h, dims) * pred_res

        model_t = None
        if use_corrector:
            model_t = self.data_prediction(x_t, t)
            corr_res = torch.tensordot(D1s, rhos_c[:-1], dims=([1], [0])) if D1s is not None else 0
            D1_t = model_t - model_prev_0
            x_t = x_t_ - _expand(alpha_t * B_h, dims) * (corr_res + rhos_c[-1] * D1_t)
        return x_t, model_t


@torch.no_grad()
def sample_uni_pc(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    seed: int | None = None,
    callback: Callback = None,
    variant: str = "bh1",
) -> torch.Tensor:
    """UniPC multistep (ComfyUI `uni_pc`; variant 'bh2' is `uni_pc_bh2`). Deterministic."""
    timesteps = sigmas.clone()
    if sigmas[-1] == 0:
        timesteps[-1] = 0.001
    solver = _UniPC(denoise, variant)
    x = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)  # to VP space
    order = min(3, len(timesteps) - 2)
    steps = len(timesteps) - 1
    batch = x.shape[0]

    def emit(i: int) -> None:
        # k-diffusion convention: x (in k-space) at sigmas[i] before step i, and the latest x0 estimate.
        if callback is not None:
            x_k = x * torch.sqrt(1.0 + timesteps[i] ** 2.0)
            callback({"i": i, "x": x_k, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": model_prev_list[-1]})

    model_prev_list: list[torch.Tensor] = []
    t_prev_list: list[torch.Tensor] = []
    for step_index in range(steps):
        if step_index == 0:
            vec_t = timesteps[0].expand(batch)
            model_prev_list = [solver.data_prediction(x, vec_t)]
            t_prev_list = [vec_t]
            emit(0)
        elif step_index < order:
            init_order = step_index
            vec_t = timesteps[init_order].expand(batch)
            x, model_x = solver.update(x, model_prev_list, t_prev_list, vec_t, init_order, use_corrector=True)
            if model_x is None:
                model_x = solver.data_prediction(x, vec_t)
            model_prev_list.append(model_x)
            t_prev_list.append(vec_t)
            emit(step_index)
        else:
            extra_final_step = 1 if step_index == steps - 1 else 0
            for step in range(step_index, step_index + 1 + extra_final_step):
                vec_t = timesteps[step].expand(batch)
                step_order = min(order, steps + 1 - step)
                use_corrector = step != steps
                x, model_x = solver.update(x, model_prev_list, t_prev_list, vec_t, step_order, use_corrector=use_corrector)
                for i in range(order - 1):
                    t_prev_list[i] = t_prev_list[i + 1]
                    model_prev_list[i] = model_prev_list[i + 1]
                t_prev_list[-1] = vec_t
                if step < steps:
                    if model_x is None:
                        model_x = solver.data_prediction(x, vec_t)
                    model_prev_list[-1] = model_x
                    emit(step)
    x = x / _alpha(timesteps[-1])
    return x


@torch.no_grad()
def sample_uni_pc_bh2(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    seed: int | None = None,
    callback: Callback = None,
) -> torch.Tensor:
    """UniPC with B(h) = expm1(h) (ComfyUI `uni_pc_bh2`)."""
    return sample_uni_pc(denoise, x, sigmas, seed=seed, callback=callback, variant="bh2")

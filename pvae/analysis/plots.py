"""Figures (matplotlib, PNG). Each function takes what it draws, returns the ``Figure``, and
writes it to ``path`` when one is given.

- `reconstructions`: inputs above their reconstructions E[x | z = E_q[z|x]].
- `samples`: E[x|z] for z ~ p(z).
- `latent_space`: posterior means coloured by label (first two dims, or PCA when D > 2).
- `interpolation`: decodes the straight line between two inputs' posterior means.
- `training_curves`: train loss and test ELBO per epoch.
- `khat_histogram`: PSIS k-hat per datapoint, with the 0.5 / 0.7 thresholds.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed; PNG files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pvae.util.files import atomic_write  # noqa: E402


def _save(fig, path):
    if path is not None:
        fmt = Path(path).suffix.lstrip(".").lower() or "png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight", format=fmt))
        plt.close(fig)
    return fig


def _as_images(x: torch.Tensor, image_shape=None) -> torch.Tensor:
    """(n, ...) -> (n, H, W) or (n, H, W, C) for imshow; flat 784 / 1024 become 28x28 / 32x32."""
    x = x.detach().float().cpu()
    n = x.shape[0]
    if image_shape is not None:
        x = x.reshape((n,) + tuple(image_shape))
    if x.dim() == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"cannot show datapoints of {x.shape[1]} values as square images")
        x = x.reshape(n, side, side)
    if x.dim() == 4:
        x = x[:, 0] if x.shape[1] == 1 else x.permute(0, 2, 3, 1)
    return x.clamp(0, 1)


def image_grid(rows, path=None, titles=None, image_shape=None):
    """Show a list of rows, each a tensor of images, as one grid."""
    rows = [_as_images(r, image_shape) for r in rows]
    ncol = max(r.shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(ncol * 0.9, len(rows) * 0.95), squeeze=False)
    for i, r in enumerate(rows):
        for j in range(ncol):
            ax = axes[i][j]
            ax.axis("off")
            if j < r.shape[0]:
                ax.imshow(r[j].numpy(), cmap="gray", vmin=0, vmax=1)
        if titles:
            axes[i][0].set_title(titles[i], fontsize=8, loc="left")
    return _save(fig, path)


def reconstructions(model, x, n: int = 10, path=None):
    """Inputs (top) and reconstructions (bottom) of the first ``n`` datapoints."""
    x = x[:n].to(model.device)
    return image_grid([x, model.reconstruct(x)], path, titles=["input", "reconstruction"])


def samples(model, n: int = 64, path=None, seed: int = 0):
    """Prior samples E[x|z], z ~ p(z), on a square-ish grid."""
    torch.manual_seed(seed)
    s = model.sample(n)
    ncol = math.ceil(math.sqrt(n))
    return image_grid([s[i:i + ncol] for i in range(0, n, ncol)], path)


def latent_space(model, x, labels=None, path=None, max_points: int = 5000, class_names=None):
    """Posterior means, coloured by label: the first two dims, or the top two principal axes.

    Works for any model/guide pair: the means come from the guide (all latent sites, concatenated).
    ``class_names`` (a list, label i -> name) labels the legend; else the label numbers.
    """
    from pvae.analysis.evaluation import posterior_means

    z = torch.cat(list(posterior_means(model, x[:max_points]).values()), dim=1)
    if z.shape[1] > 2:
        zc = z - z.mean(0)
        _, _, v = torch.linalg.svd(zc, full_matrices=False)
        z, axes = zc @ v[:2].T, ("PC 1 of E_q[z|x]", "PC 2 of E_q[z|x]")
    elif z.shape[1] == 2:
        axes = ("z_1", "z_2")
    else:
        z, axes = torch.cat([z, torch.zeros_like(z)], 1), ("z_1", "")
    fig, ax = plt.subplots(figsize=(5, 4.5) if labels is None else (6.2, 4.5), layout="constrained")
    c = None if labels is None else labels[:max_points].cpu().numpy()
    z = z.numpy()
    if c is None:
        ax.scatter(z[:, 0], z[:, 1], s=3, alpha=0.7)
    else:
        for i, label in enumerate(sorted(set(c.tolist()))):
            name = class_names[int(label)] if class_names is not None and 0 <= int(label) < len(class_names) else label
            sel = c == label
            ax.scatter(z[sel, 0], z[sel, 1], s=3, alpha=0.7, color=plt.get_cmap("tab10")(i % 10), label=str(name))
        ax.legend(markerscale=4, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title("latent space")
    return _save(fig, path)


def interpolation(model, x_a, x_b, steps: int = 10, path=None):
    """Decode z_t = (1-t) E_q[z|x_a] + t E_q[z|x_b] for t in [0, 1]."""
    dev = model.device
    za, zb = model.encode(x_a[None].to(dev)), model.encode(x_b[None].to(dev))
    t = torch.linspace(0, 1, steps, device=dev)[:, None]
    return image_grid([model.decode((1 - t) * za + t * zb)], path, titles=["interpolation"])


def training_curves(history, path=None):
    """Train loss (-objective per datapoint) and test ELBO against epochs."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ep = [r["epoch"] for r in history]
    ax.plot(ep, [-r["train_loss"] for r in history], "o-", label="train objective (-loss)")
    if any("test_elbo" in r for r in history):
        ax.plot(ep, [r.get("test_elbo", float("nan")) for r in history], "s-", label="test ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def khat_histogram(khat, path=None):
    """Histogram of PSIS k-hat per datapoint; above 0.7 the importance estimate is unreliable."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    kh = torch.as_tensor(khat).cpu().double().numpy()
    finite = kh[np.isfinite(kh)]  # arviz returns inf where a tail is too short to fit
    ax.hist(finite, bins=40, color="tab:blue", alpha=0.8)
    for v, ls in ((0.5, ":"), (0.7, "--")):
        ax.axvline(v, color="k", ls=ls, label=f"k-hat = {v}")
    ax.set_xlabel("PSIS k-hat")
    ax.set_ylabel("datapoints")
    ax.set_title(f"{(kh > 0.7).mean():.0%} of datapoints above 0.7"
                 + (f" ({(~np.isfinite(kh)).sum()} not finite)" if finite.size < kh.size else ""))
    ax.legend()
    return _save(fig, path)


def learning_curves(histories: dict, path=None):
    """Test ELBO (solid) and training objective (dashed) per epoch, one colour per run."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, h) in enumerate(histories.items()):
        c = f"C{i % 10}"
        ep = [r["epoch"] for r in h]
        if any("test_elbo" in r for r in h):
            ax.plot(ep, [r.get("test_elbo", float("nan")) for r in h], "o-", color=c, label=f"{name} (test ELBO)")
        ax.plot(ep, [-r["train_loss"] for r in h], "x--", color=c, alpha=0.6)  # markers: one epoch is a point
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.set_title("learning curves (dashed: training objective)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def per_objective(values: dict, ylabel: str, path=None, hline=None, paired: bool = False):
    """Box plot of a per-datapoint quantity (log p(x), k-hat, ...) for each run, with its mean (dot).

    ``paired=True`` plots each run's difference to the first run on the same datapoints, which
    removes the (large) spread between datapoints and shows what the runs change.
    """
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(values)), 4))
    arrays = [torch.as_tensor(v).double().cpu().numpy() for v in values.values()]
    if paired:
        arrays = [a - arrays[0] for a in arrays]
        ylabel = f"{ylabel} minus {list(values)[0]}'s"
    data = [a[np.isfinite(a)] for a in arrays]
    ax.boxplot(data, showfliers=False)
    means = [d.mean() if d.size else np.nan for d in data]
    ses = [d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else 0.0 for d in data]
    ax.errorbar(range(1, len(data) + 1), means, yerr=[2 * s for s in ses], fmt="o", color="C3", capsize=4,
                label="mean ± 2 s.e.")
    ax.set_xticks(range(1, len(values) + 1), list(values), rotation=20, fontsize=8)
    if hline is not None:
        ax.axhline(hline, color="k", ls="--", lw=1)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def traversal(model, x, dims=None, values=None, path=None, data=None, rows: int = 8):
    """One row per latent dimension: E_q[z|x] with that dimension swept over ``values`` (default
    -3..3 in 9 steps), decoded. ``dims`` defaults to the ``rows`` most active dimensions on
    ``data`` (largest Cov_x E_q[z|x]: the ones that change the image), else the first ``rows``."""
    z0 = model.encode(x[None].to(model.device))[0]
    if dims is None and data is not None:
        with torch.no_grad():
            spread = model.encode(data.to(model.device)).var(0, unbiased=False)
        dims = spread.argsort(descending=True)[:rows].tolist()
    dims = list(range(min(rows, z0.shape[0]))) if dims is None else list(dims)
    values = torch.linspace(-3, 3, 9) if values is None else torch.as_tensor(values, dtype=z0.dtype)
    rows = []
    for d in dims:
        z = z0.expand(len(values), -1).clone()
        z[:, d] = values.to(z.device)
        rows.append(model.decode(z))
    return image_grid(rows, path, titles=[f"z_{d}" for d in dims])


def latent_map(model, n: int = 15, span: float = 3.0, path=None):
    """For a 2-D latent: decode an n x n grid of z over [-span, span]^2 (the learned manifold)."""
    if getattr(model, "latent_dim", None) != 2:
        raise ValueError("latent_map draws a 2-D latent space: the model needs latent_dim=2")
    g = torch.linspace(-span, span, n, device=model.device)
    z = torch.stack(torch.meshgrid(g.flip(0), g, indexing="ij"), -1).reshape(-1, 2)[:, [1, 0]]
    images = model.decode(z)
    return image_grid([images[i * n:(i + 1) * n] for i in range(n)], path)


def completions(model, x, n: int = 10, num_samples: int = 3, path=None):
    """Structured output ([`pvae.StructuredCVAE`][pvae.StructuredCVAE]): the truth, the visible input, and
    ``num_samples`` completions, each from its own z ~ p(z | visible)."""
    x = x[:n].to(model.device)
    flat = x.reshape(x.shape[0], -1)
    done = model.complete(x, num_samples=num_samples).reshape(num_samples, x.shape[0], -1)
    rows = [flat, flat * model.visible_mask] + list(done)
    return image_grid(rows, path, titles=["truth", "input"] + [f"sample {i + 1}" for i in range(num_samples)])


def class_samples(model, per_class: int = 8, path=None, seed: int = 0):
    """One row per class: ``model.sample(n, y=c)`` for a label-conditioned model."""
    torch.manual_seed(seed)
    rows = [model.sample(per_class, y=c) for c in range(model.num_classes)]
    return image_grid(rows, path, titles=[f"y = {c}" for c in range(model.num_classes)])


def denoising(x_clean, x_noisy, denoised: dict, n: int = 10, path=None):
    """Rows: clean, corrupted, and each model's reconstruction of the corrupted input."""
    rows = [x_clean[:n], x_noisy[:n]] + [v[:n] for v in denoised.values()]
    return image_grid([r.reshape(r.shape[0], -1) for r in rows], path,
                      titles=["clean", "corrupted"] + list(denoised))



def score_histogram(scores, is_anomaly, path=None):
    """Anomaly scores (-log p(x)) of the normal and the anomalous datapoints, overlaid."""
    scores, is_anomaly = torch.as_tensor(scores).float().cpu(), torch.as_tensor(is_anomaly).bool().cpu()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = torch.linspace(float(scores.min()), float(scores.max()), 50).numpy()
    ax.hist(scores[~is_anomaly].numpy(), bins=bins, alpha=0.6, density=True, label="normal")
    ax.hist(scores[is_anomaly].numpy(), bins=bins, alpha=0.6, density=True, label="anomaly")
    ax.set_xlabel("-log p(x) (nats)")
    ax.set_ylabel("density")
    ax.legend()
    return _save(fig, path)


def factor_traversals(model, data, result: dict, index: int = 0, steps: int = 9, path=None):
    """One row per known factor: datapoint ``index`` with the latent dimension that carries the
    factor best (``result["best"]`` of [`pvae.mig`][pvae.analysis.disentangle.mig]) swept over that dimension's range
    on ``data`` (5th to 95th percentile), decoded. A disentangled model changes only that factor
    along each row."""
    from pvae.analysis.evaluation import encodings

    codes = encodings(model, data.eval_x())
    z0 = codes[index].to(model.device)
    rows, titles = [], []
    for name, dim in result["best"].items():
        lo, hi = codes[:, dim].quantile(0.05), codes[:, dim].quantile(0.95)
        z = z0.expand(steps, -1).clone()
        z[:, dim] = torch.linspace(float(lo), float(hi), steps, device=z.device)
        rows.append(model.decode(z))
        titles.append(f"{name}: z_{dim} (gap {result['per_factor'][name]:.2f})")
    return image_grid(rows, path, titles=titles)

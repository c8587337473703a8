"""Draw docs/img/architecture.png: pvae's layers, lowest at the bottom, with the modules of each.

    python docs/architecture_figure.py

Read from the package itself, so the picture follows the code. An arrow only ever points down:
a layer imports from the layers below it and never from one above (checked by
``python3 ../shared/tools/house.py pvae --layers util,data,nn,models,infer,analysis,training,cli``).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "pvae"
LAYERS = [  # (package, what it is), lowest first
    ("util", "checks, progress bars, atomic files"),
    ("data", "datasets by name, shapes with known factors"),
    ("nn", "nets, likelihoods p(x|z), guides q(z|x), priors p(z)"),
    ("models", "one variant per file: model + guide"),
    ("infer", "program analysis, log-weights, objectives, compiled step, IS, AIS, BDMC"),
    ("analysis", "evaluate, report, figures, applications, samplers, MIG"),
    ("training", "fit and its settings, epochs, checkpoints, run folders, compare"),
    ("cli", "one module per command, the parser"),
]


def main(path=Path(__file__).parent / "img" / "architecture.png"):
    fig, ax = plt.subplots(figsize=(12.5, 7.5))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, len(LAYERS) * 1.1)
    ax.axis("off")
    colors = plt.cm.Blues([0.25 + 0.6 * i / len(LAYERS) for i in range(len(LAYERS))])
    for i, (pkg, what) in enumerate(LAYERS):
        y = i * 1.1
        modules = sorted(p.stem for p in (ROOT / pkg).glob("*.py") if p.stem not in ("__init__", "__main__"))
        ax.add_patch(plt.Rectangle((0.1, y + 0.1), 9.8, 0.85, color=colors[i], ec="black", lw=0.6))
        ax.text(0.25, y + 0.68, f"pvae.{pkg}", fontsize=12, weight="bold", va="center")
        ax.text(2.3, y + 0.68, what, fontsize=10, va="center", style="italic")
        ax.text(0.25, y + 0.32, "  ".join(modules), fontsize=8.5, va="center", family="monospace")
        if i:
            ax.annotate("", xy=(9.6, y - 0.02), xytext=(9.6, y + 0.12), arrowprops=dict(arrowstyle="->", lw=1.2))
    ax.set_title("pvae's layers: each imports only from the layers below it", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    print(main())

"""Semi-supervised classification with M2 (Kingma et al. 2014): a VAE whose label is a latent
variable where unknown, trained with TraceEnum_ELBO (the label summed out exactly in the guide)
on the whole training set of which only --labels images keep their label. Reports the test
accuracy of the guide's classifier q(y|x), next to the same classifier net trained on the
labelled images alone.

    python examples/semi_supervised.py --dataset fashion-mnist --labels 100 --epochs 10
    python examples/semi_supervised.py --smoke
"""

import argparse
import time

import torch
from torch.nn import functional as F

import pvae
from pvae.data import semi_supervised
from pvae.nn.nets import MLP

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist-sample")
ap.add_argument("--labels", type=int, nargs="+", default=[100, 1000], help="how many training labels are kept")
ap.add_argument("--epochs", type=int, default=10)
ap.add_argument("--hidden", type=int, nargs="+", default=[500])
ap.add_argument("--latent-dim", type=int, default=50)
ap.add_argument("--classifier-weight", type=float, default=50.0)
ap.add_argument("--run-dir", default=None)
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()
if args.smoke:
    args.epochs, args.hidden, args.labels = 1, [32], [100]

train = pvae.load_dataset(args.dataset, "train", binarize="dynamic", n=1000 if args.smoke else None)
test = pvae.load_dataset(args.dataset, "test", binarize="dynamic", n=200 if args.smoke else None)
x_test = test.eval_x()


def labelled_only(data):
    """The reference: the classifier net alone, trained by cross-entropy on the labelled images."""
    known = data.y >= 0
    x, y = data.x[known].reshape(int(known.sum()), -1), data.y[known]
    torch.manual_seed(0)
    net = MLP((x.shape[1],), args.hidden, (10,), "softplus")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for step in range(2000 if not args.smoke else 50):
        idx = torch.randint(0, x.shape[0], (100,))
        loss = F.cross_entropy(net(torch.bernoulli(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((net(x_test.reshape(x_test.shape[0], -1)).argmax(-1) == test.y).float().mean())


rows = []
for n_labels in args.labels:
    data = semi_supervised(train, n_labels, seed=0)
    torch.manual_seed(0)
    m = pvae.SemiSupervisedVAE(latent_dim=args.latent_dim, hidden=args.hidden,
                               classifier_weight=args.classifier_weight)
    t0 = time.perf_counter()
    pvae.fit(m, data, "enum-elbo", epochs=args.epochs, progress=not args.smoke,
             run_dir=f"{args.run_dir}/m2-{n_labels}" if args.run_dir else None)
    seconds = time.perf_counter() - t0
    acc, ref = m.accuracy(x_test, test.y), labelled_only(data)
    rows.append((n_labels, acc, ref, seconds))
    print(f"{n_labels} labels: M2 test accuracy {acc:.4f} (trained {seconds:.0f}s); "
          f"the classifier on the labelled images alone {ref:.4f}", flush=True)

print("\n| labels | M2 test accuracy | labelled images alone | M2 train s |\n|---|---|---|---|")
for n_labels, acc, ref, seconds in rows:
    print(f"| {n_labels} | {acc:.4f} | {ref:.4f} | {seconds:.0f} |")

"""NumPyro's side of bench_peers.py, run in its own virtual environment (jax needs Python >= 3.12).

The same workload as the other systems: the IWAE paper's 784-200-200-50 tanh VAE, Bernoulli
likelihood, diagonal Gaussian guide, Adam 1e-3, batch 100, written the way NumPyro's own VAE
example writes it (stax nets registered with ``numpyro.module``, one epoch of ``svi.update`` under
``jax.jit`` with ``lax.fori_loop``). Prints one JSON line: milliseconds per step (epoch under
jit, after a compiling warm-up) and the seconds of a k = 5000 log p(x) estimate on 100 images.

    python numpyro_worker.py --k 1 --steps 50 --data x.npy
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax, random
from jax.example_libraries import stax
from numpyro.infer import SVI, RenyiELBO, Trace_ELBO


def encoder(hidden=200, z_dim=50):
    return stax.serial(stax.Dense(hidden), stax.Tanh, stax.Dense(hidden), stax.Tanh,
                       stax.FanOut(2), stax.parallel(stax.Dense(z_dim), stax.serial(stax.Dense(z_dim), stax.Softplus)))


def decoder(hidden=200, out_dim=784):
    return stax.serial(stax.Dense(hidden), stax.Tanh, stax.Dense(hidden), stax.Tanh, stax.Dense(out_dim))


def model(batch, z_dim=50):
    decode = numpyro.module("decoder", decoder(), (batch.shape[0], z_dim))
    with numpyro.plate("batch", batch.shape[0]):
        z = numpyro.sample("z", dist.Normal(0, 1).expand([z_dim]).to_event(1))
        numpyro.sample("obs", dist.Bernoulli(logits=decode(z)).to_event(1), obs=batch)


def guide(batch, z_dim=50):
    encode = numpyro.module("encoder", encoder(), (batch.shape[0], 784))
    loc, scale = encode(batch)
    with numpyro.plate("batch", batch.shape[0]):
        numpyro.sample("z", dist.Normal(loc, scale + 1e-4).to_event(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--data", required=True)
    ap.add_argument("--eval", action="store_true", help="also time log p(x) with k = 5000 on 100 images")
    ap.add_argument("--e2e-epochs", type=int, default=0,
                    help="instead: wall time of this many epochs over all of --data, from SVI's init to the trained "
                         "parameters, jit compile included")
    args = ap.parse_args()
    if args.e2e_epochs:
        return end_to_end(args)
    x = jnp.asarray(np.load(args.data)[: args.batch * args.steps])
    loss = Trace_ELBO() if args.k == 1 else RenyiELBO(alpha=0, num_particles=args.k)
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), loss)
    state = svi.init(random.PRNGKey(0), x[: args.batch])

    @jax.jit
    def epoch(state, key):
        def body(i, carry):
            state, total, key = carry
            key, sub = random.split(key)
            batch = lax.dynamic_slice_in_dim(x, i * args.batch, args.batch)
            batch = random.bernoulli(sub, batch).astype(jnp.float32)  # dynamic binarization
            state, loss = svi.update(state, batch)
            return state, total + loss, key
        return lax.fori_loop(0, args.steps, body, (state, 0.0, key))

    out = epoch(state, random.PRNGKey(1))  # compile
    jax.block_until_ready(out)
    state = out[0]
    t0 = time.perf_counter()
    out = epoch(state, random.PRNGKey(2))
    jax.block_until_ready(out)
    result = {"k": args.k, "ms_per_step": 1000 * (time.perf_counter() - t0) / args.steps,
              "jax": jax.__version__, "numpyro": numpyro.__version__}
    if args.eval:
        params = svi.get_params(out[0])
        xe = (x[:100] > 0.5).astype(jnp.float32)

        @jax.jit
        def log_px(key):
            def one(key):  # log p(x, z) - log q(z|x) for one draw z ~ q(z|x), per datapoint
                z = numpyro.handlers.seed(guide, key)
                tr = numpyro.handlers.trace(numpyro.handlers.substitute(z, params)).get_trace(xe)
                zv = tr["z"]["value"]
                lq = tr["z"]["fn"].log_prob(zv)
                mt = numpyro.handlers.trace(numpyro.handlers.substitute(
                    numpyro.handlers.condition(model, {"z": zv}), params)).get_trace(xe)
                return mt["z"]["fn"].log_prob(zv) + mt["obs"]["fn"].log_prob(xe) - lq
            lw = lax.map(lambda keys: jax.vmap(one)(keys), random.split(key, 5000).reshape(10, 500, 2))
            lw = lw.reshape(5000, -1)
            return jax.scipy.special.logsumexp(lw, 0) - jnp.log(5000.0)
        jax.block_until_ready(log_px(random.PRNGKey(3)))  # compile
        t0 = time.perf_counter()
        ll = jax.block_until_ready(log_px(random.PRNGKey(4)))
        result.update(eval_seconds=time.perf_counter() - t0, eval_log_px=float(ll.mean()))
    print(json.dumps(result))


def end_to_end(args):
    """Seconds from the call to a trained model: init, jit compile of one epoch, every epoch."""
    t0 = time.perf_counter()
    x = jnp.asarray(np.load(args.data))
    steps = x.shape[0] // args.batch
    loss = Trace_ELBO() if args.k == 1 else RenyiELBO(alpha=0, num_particles=args.k)
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), loss)
    state = svi.init(random.PRNGKey(0), x[: args.batch])

    @jax.jit
    def epoch(state, key, perm):
        def body(i, carry):
            state, total, key = carry
            key, sub = random.split(key)
            batch = jnp.take(x, lax.dynamic_slice_in_dim(perm, i * args.batch, args.batch), axis=0)
            batch = random.bernoulli(sub, batch).astype(jnp.float32)
            state, loss = svi.update(state, batch)
            return state, total + loss, key
        return lax.fori_loop(0, steps, body, (state, 0.0, key))

    key = random.PRNGKey(1)
    for e in range(args.e2e_epochs):
        key, k_perm, k_epoch = random.split(key, 3)
        state, total, _ = epoch(state, k_epoch, random.permutation(k_perm, x.shape[0]))
    jax.block_until_ready(state)
    print(json.dumps({"k": args.k, "e2e_seconds": time.perf_counter() - t0, "epochs": args.e2e_epochs,
                      "final_loss": float(total) / (steps * args.batch), "jax": jax.__version__,
                      "numpyro": numpyro.__version__}))


if __name__ == "__main__":
    main()

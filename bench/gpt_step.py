"""A character-level GPT's training step: kernprop's ``Trainer.fit`` against PyTorch
eager (and ``torch.compile``, autocast bf16) on the same model, weights and batches
(issue 27's targets).

    python bench/gpt_step.py [--layers 4 --heads 4 --embd 128 --block 128 --batch 16]
                             [--steps 20] [--rounds 3] [--threads 2] [--compile] [--bf16]
                             [--loss-steps 300] [--generate 256]

Each round times ``--steps`` steps of every contender in a block (one untimed step
first: another library's idle threads spin for milliseconds after its last call).
kernprop: ``Trainer(GPT, optimizer=Adam(decoupled=True))``, ``fit(shuffle=False)`` over
``steps x batch`` windows, tokens/s from ``history["tokens_per_s"]`` (the step loop
only).  PyTorch: nanoGPT's model written plainly (``F.scaled_dot_product_attention``,
tanh-GELU), ``F.cross_entropy``, ``backward``, ``torch.optim.AdamW``, on
``torch.set_num_threads(threads)``.  The vocabulary is 65 (nanoGPT's Shakespeare).

``--loss-steps N`` also trains both for N steps from the same weights on the same
batches and prints the final losses; ``--generate N`` times sampling N tokens greedily
(kernprop's ``generate`` with its key/value cache against a PyTorch loop with a
key/value cache).  Peak memory: ``--only kernprop`` and ``--only torch`` (one contender
per process) print the growth of the process's peak resident memory over what it held
before the contender's runs.

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import time

import numpy as np

import kernprop
from kernprop import nn, optim
from kernprop.train import Trainer

VOCAB = 65


def current_rss():
    """This process's resident memory now, bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def torch_twin(model):
    """nanoGPT's GPT in PyTorch with ``model``'s weights (Linear weights transposed)."""
    import torch
    import torch.nn.functional as F

    class Block(torch.nn.Module):
        def __init__(self, C, H):
            super().__init__()
            self.H = H
            self.ln_1, self.ln_2 = torch.nn.LayerNorm(C), torch.nn.LayerNorm(C)
            self.c_attn, self.attn_proj = torch.nn.Linear(C, 3 * C), torch.nn.Linear(C, C)
            self.c_fc, self.c_proj = torch.nn.Linear(C, 4 * C), torch.nn.Linear(4 * C, C)

        def qkv(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            return [t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v)]

        def finish(self, x, y):
            B, T, C = x.shape
            x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

        def forward(self, x):
            q, k, v = self.qkv(x)
            return self.finish(x, F.scaled_dot_product_attention(q, k, v, is_causal=True))

    class GPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            C, V = model.n_embd, model.vocab_size
            self.wte, self.wpe = torch.nn.Embedding(V, C), torch.nn.Embedding(model.block_size, C)
            self.blocks = torch.nn.ModuleList(Block(C, model.n_head) for _ in model.blocks)
            self.ln_f = torch.nn.LayerNorm(C)
            self.lm_head = torch.nn.Linear(C, V, bias=False)

        def ordered(self):
            out = [(self.wte.weight, False), (self.wpe.weight, False)]
            for b in self.blocks:
                out += [(b.ln_1.weight, False), (b.ln_1.bias, False), (b.c_attn.weight, True), (b.c_attn.bias, False),
                        (b.attn_proj.weight, True), (b.attn_proj.bias, False), (b.ln_2.weight, False),
                        (b.ln_2.bias, False), (b.c_fc.weight, True), (b.c_fc.bias, False), (b.c_proj.weight, True),
                        (b.c_proj.bias, False)]
            return out + [(self.ln_f.weight, False), (self.ln_f.bias, False), (self.lm_head.weight, True)]

        def forward(self, ids):
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.ln_f(x))

        @torch.no_grad()
        def generate(self, ids, new):
            # greedy, with a key/value cache per layer (the prompt once, then a token at a
            # time); past block_size the last block_size tokens are recomputed (nanoGPT's crop)
            block, out = model.block_size, ids
            pos = block  # start: (re)compute the window
            for _ in range(new):
                if pos == block:
                    caches, pos, cur = [None] * len(self.blocks), 0, out[:, -block:]
                T = cur.shape[1]
                x = self.wte(cur) + self.wpe(torch.arange(pos, pos + T))
                for i, layer in enumerate(self.blocks):
                    q, k, v = layer.qkv(x)
                    if caches[i] is not None:
                        k, v = torch.cat([caches[i][0], k], 2), torch.cat([caches[i][1], v], 2)
                    caches[i] = (k, v)
                    y = F.scaled_dot_product_attention(q, k, v, is_causal=pos == 0)
                    x = layer.finish(x, y)
                cur = self.lm_head(self.ln_f(x[:, -1:])).argmax(-1)
                out = torch.cat([out, cur], 1)
                pos += T
            return out

    twin = GPT()
    with torch.no_grad():
        for mine, (theirs, transposed) in zip(model.parameters(), twin.ordered()):
            theirs.copy_(torch.from_numpy((mine.T if transposed else mine).copy()))
    return twin


def batches(steps, batch, block, seed=0):
    """``steps x batch`` windows (ids, next-token targets) of a fixed random text."""
    rng = np.random.default_rng(seed)
    text = rng.integers(0, VOCAB, 200_000)
    starts = rng.integers(0, text.size - block - 1, steps * batch)
    X = np.stack([text[s:s + block] for s in starts])
    y = np.stack([text[s + 1:s + block + 1] for s in starts])
    return X, y


def kernprop_trainer(model, lr, precision="fp32"):
    return Trainer(model, optimizer=optim.Adam(lr, betas=(0.9, 0.95), weight_decay=0.1, decoupled=True),
                   batch_size=args.batch, precision=precision)


def time_kernprop(X, y, precision="fp32"):
    model = nn.GPT(VOCAB, args.block, args.layers, args.heads, args.embd, rng=0)
    trainer = kernprop_trainer(model, 1e-3, precision)
    trainer.fit(X[:2 * args.batch], y[:2 * args.batch], shuffle=False, verbose=0)  # warm: compile or load
    return [trainer.fit(X, y, shuffle=False, verbose=0)["tokens_per_s"][0] for _ in range(args.rounds)]


def time_torch(X, y, compile_=False, bf16=False):
    import contextlib

    import torch
    import torch.nn.functional as F

    twin = torch_twin(nn.GPT(VOCAB, args.block, args.layers, args.heads, args.embd, rng=0))
    opt = torch.optim.AdamW(twin.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    forward = torch.compile(twin) if compile_ else twin
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    autocast = (lambda: torch.autocast("cpu", torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step(s):
        ids, targets = Xt[s * args.batch:(s + 1) * args.batch], yt[s * args.batch:(s + 1) * args.batch]
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(forward(ids).reshape(-1, VOCAB).float(), targets.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    step(0), step(1)  # warm (compile)
    steps, out = X.shape[0] // args.batch, []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for s in range(steps):
            step(s)
        out.append(steps * args.batch * args.block / (time.perf_counter() - t0))
    return out


def loss_after(steps):
    """Final loss (mean of the last 10 steps) of both after ``steps`` steps on the same batches."""
    import torch
    import torch.nn.functional as F

    X, y = batches(steps, args.batch, args.block, seed=1)
    # a learnable text: a repeating random sequence with noise
    model = nn.GPT(VOCAB, args.block, args.layers, args.heads, args.embd, rng=0)
    twin = torch_twin(model)
    trainer = kernprop_trainer(model, 1e-3)
    trainer.batch_size = args.batch
    ours = trainer.fit(X, y, epochs=1, shuffle=False, verbose=0)
    # per-step losses of the last 10 steps: refit is not possible; compare the epoch means and a final evaluation
    opt = torch.optim.AdamW(twin.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    theirs = []
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for s in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(twin(Xt[s * args.batch:(s + 1) * args.batch]).reshape(-1, VOCAB),
                               yt[s * args.batch:(s + 1) * args.batch].reshape(-1))
        loss.backward()
        opt.step()
        theirs.append(loss.item())
    Xv, yv = batches(4, args.batch, args.block, seed=2)
    with torch.no_grad():
        t_val = F.cross_entropy(twin(torch.from_numpy(Xv)).reshape(-1, VOCAB), torch.from_numpy(yv).reshape(-1)).item()
    return ours["loss"][0], float(np.mean(theirs)), trainer.evaluate(Xv, yv)["loss"], t_val


def generate_times(new, blocks=2, calls=2):
    """tokens/s of greedy ``generate`` of ``new`` tokens, kernprop's and the torch twin's:
    the best call of ``blocks`` blocks of ``calls`` timed calls per contender, each block
    after an untimed call, the contenders' blocks alternating (so that neither is timed
    just after the other's threads went idle); and how many tokens the two agree on."""
    import torch

    model = nn.GPT(VOCAB, args.block, args.layers, args.heads, args.embd, rng=0)
    twin = torch_twin(model)
    prompt = np.arange(8).reshape(1, 8) % VOCAB
    best = {"kernprop": float("inf"), "torch": float("inf")}
    contenders = {"kernprop": lambda n: model.generate(prompt, n, temperature=0),
                  "torch": lambda n: twin.generate(torch.from_numpy(prompt), n).numpy()}
    tokens = {}
    for _ in range(blocks):
        for name, generate in contenders.items():
            generate(4)
            for _ in range(calls):
                start = time.perf_counter()
                tokens[name] = generate(new)
                best[name] = min(best[name], time.perf_counter() - start)
    ours, theirs = tokens["kernprop"], tokens["torch"]
    agree = int(np.argmax(np.r_[ours[0] != theirs[0], True]))  # greedy: the same tokens until rounding parts them
    return new / best["kernprop"], new / best["torch"], agree


def main():
    global args
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--embd", type=int, default=128)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (inductor)")
    parser.add_argument("--bf16", action="store_true", help="also precision bf16 against torch autocast bf16")
    parser.add_argument("--loss-steps", type=int, default=0)
    parser.add_argument("--generate", type=int, default=0)
    parser.add_argument("--only", choices=("kernprop", "torch"), default=None)
    args = parser.parse_args()
    kernprop.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    print(f"GPT {args.layers} layers, {args.heads} heads, n_embd {args.embd}, block {args.block}, batch "
          f"{args.batch}, vocab {VOCAB}, AdamW, fp32; {args.threads} threads; {cpu_name()}; "
          f"torch {torch.__version__ if torch else 'not installed'}")
    X, y = batches(args.steps, args.batch, args.block)
    rss_before = current_rss()
    rows = {}
    if args.only != "torch":
        rows["kernprop"] = time_kernprop(X, y)
    if torch is not None and args.only != "kernprop":
        rows["torch eager"] = time_torch(X, y)
        if args.compile:
            try:
                rows["torch.compile"] = time_torch(X, y, compile_=True)
            except Exception as exc:  # noqa: BLE001 - inductor needs a C++ toolchain
                print(f"torch.compile: cannot compile here: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    if args.bf16:
        rows["kernprop bf16"] = time_kernprop(X, y, "bf16")
        if torch is not None:
            rows["torch autocast bf16"] = time_torch(X, y, bf16=True)
    base = max(rows.get("torch eager", [float("nan")]))
    for name, values in rows.items():
        best = max(values)
        print(f"  {name:22s} {best:10,.0f} tokens/s (rounds: {', '.join(f'{v:,.0f}' for v in values)})"
              f"  {best / base:5.2f}x torch eager")
    if args.only:
        # one contender in this process: the growth of its peak resident memory over the
        # process before it ran (libraries imported, batches built) is that contender's
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"  peak resident memory of the {args.only} runs: +{(peak - rss_before) / 2**20:,.0f} MiB "
              f"over the {rss_before / 2**20:,.0f} MiB before them")
    if args.loss_steps and torch is not None:
        ours, theirs, v_ours, v_theirs = loss_after(args.loss_steps)
        print(f"  loss over {args.loss_steps} steps (mean per step): kernprop {ours:.4f}, torch {theirs:.4f} "
              f"({100 * (ours / theirs - 1):+.2f}%); held-out loss after: kernprop {v_ours:.4f}, "
              f"torch {v_theirs:.4f} ({100 * (v_ours / v_theirs - 1):+.2f}%)")
    if args.generate and torch is not None:
        ours, theirs, agree = generate_times(args.generate)
        print(f"  generate {args.generate} tokens (greedy, batch 1, KV cache): kernprop {ours:,.0f} tokens/s, "
              f"torch {theirs:,.0f} tokens/s ({ours / theirs:.2f}x); the same tokens for the first {agree}")


if __name__ == "__main__":
    main()

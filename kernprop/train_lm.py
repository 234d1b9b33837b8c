"""``kernprop train-lm``: train a character-level GPT on a text and print a sample.

Without ``--text`` it trains on English that ships with every Python: the docstrings of
the standard library's modules, read from their sources at run time
(``kernprop.data.python_docs_text``; nothing is downloaded or written).  The text is split
90/10 in its order; training takes ``--steps`` batches of random windows of the first
part, reports the validation loss on windows of the second ``--evals`` times (a progress
bar between, on a terminal) against the unigram entropy (the loss of knowing only each
character's frequency), then samples ``--sample`` characters from the trained model.
The defaults (2 layers, 4 heads, n_embd 64, block 64, batch 16, 800 steps) finish in
about a minute on 2 cores.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["add_parser", "main"]


def add_parser(sub) -> None:
    """Register ``train-lm`` on the ``kernprop`` command line's subparsers."""
    parser = sub.add_parser("train-lm", help="train a character-level GPT on a text (default: Python's own "
                                             "documentation) and print a sample")
    positive = _positive_int
    parser.add_argument("--text", metavar="FILE", default=None,
                        help="a UTF-8 text file (default: the standard library's docstrings, gathered at run time)")
    parser.add_argument("--bytes", action="store_true", help="tokens are the text's UTF-8 bytes (256), not its characters")
    parser.add_argument("--layers", type=positive, default=2, help="transformer blocks (default 2)")
    parser.add_argument("--heads", type=positive, default=4, help="attention heads (default 4)")
    parser.add_argument("--embd", type=positive, default=64, help="embedding width, a multiple of --heads (default 64)")
    parser.add_argument("--block-size", type=positive, default=64, help="context length in tokens (default 64)")
    parser.add_argument("--batch-size", type=positive, default=16, help="windows per step (default 16)")
    parser.add_argument("--steps", type=positive, default=800, help="training steps (default 800)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default 3e-3)")
    parser.add_argument("--precision", choices=("fp32", "bf16x3", "bf16"), default="fp32",
                        help="how the products are computed (kernprop.precision; default fp32)")
    parser.add_argument("--backend", default=None, help="numba (default), cython or numpy")
    parser.add_argument("--threads", type=positive, default=None, help="CPU threads (default: every core)")
    parser.add_argument("--evals", type=positive, default=4, help="validation reports during training (default 4)")
    parser.add_argument("--sample", type=int, default=300, metavar="N",
                        help="characters to sample after training (0: none; default 300)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the batches and the sample")
    parser.add_argument("--save", metavar="PATH", default=None, help="write the trained model as a checkpoint")
    parser.set_defaults(func=main)


def _positive_int(value):
    import argparse

    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return number


def _fail(message):
    print(f"kernprop train-lm: {message}", file=sys.stderr)
    return 2


def _read_text(path, binary):
    from kernprop.data import python_docs_text

    if path is None:
        return python_docs_text(), "the standard library's docstrings"
    try:
        if binary:
            with open(path, "rb") as f:
                return f.read(), path
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except UnicodeDecodeError as exc:
        raise ValueError(f"--text {path}: not UTF-8 ({exc.reason} at byte {exc.start}); pass --bytes") from None
    except OSError as exc:
        raise ValueError(f"--text {path}: {exc.strerror or exc}") from None


def main(args) -> int:
    import numpy as np

    import kernprop
    from kernprop import nn, optim
    from kernprop.backends import get_backend, status
    from kernprop.data import ByteCorpus, CharCorpus
    from kernprop.train import Trainer, stderr_is_tty

    start = time.perf_counter()
    backend = args.backend or get_backend()
    try:
        state = status(backend)
    except ValueError as exc:
        return _fail(str(exc))
    if not state.available or backend == "cuda":
        return _fail(f"backend {backend!r} cannot train a GPT here: {state.reason or 'a GPT trains on the CPU backends'}")
    if args.embd % args.heads:
        return _fail(f"--embd {args.embd} must be a multiple of --heads {args.heads}")
    if not (args.lr > 0 and np.isfinite(args.lr)):
        return _fail(f"--lr must be a positive number, got {args.lr}")
    if args.save is not None:
        from kernprop.cli import _check_save_path, _UserError

        try:
            _check_save_path(args.save)
        except _UserError as exc:
            return _fail(str(exc))
    try:
        text, source = _read_text(args.text, args.bytes)
        corpus = ByteCorpus(text) if args.bytes else CharCorpus(text)
        block = args.block_size
        X_val, y_val = corpus.windows("val", block)
    except ValueError as exc:
        return _fail(str(exc))
    if args.threads is not None:
        kernprop.set_num_threads(args.threads)
    unigram = corpus.unigram_entropy("val")
    print(f"corpus: {source}: {corpus.tokens.size:,} tokens, vocabulary {corpus.vocab_size}, "
          f"{corpus.train.size:,} for training, {corpus.val.size:,} for validation; "
          f"unigram entropy {unigram:.3f} nats/token")
    rng = np.random.default_rng(args.seed)
    X_val, y_val = X_val[:256], y_val[:256]  # enough windows for a steady estimate, quick to evaluate
    model = nn.GPT(corpus.vocab_size, block, args.layers, args.heads, args.embd, rng=rng)
    optimizer = optim.Adam(args.lr, betas=(0.9, 0.99), weight_decay=0.1, decoupled=True)
    trainer = Trainer(model, optimizer=optimizer, backend=backend, batch_size=args.batch_size,
                      precision=args.precision, seed=args.seed)
    size = sum(p.size for p in model.parameters())
    print(f"model: GPT, {args.layers} layers, {args.heads} heads, n_embd {args.embd}, block {block}: "
          f"{size:,} parameters; {args.steps} steps of {args.batch_size} x {block} tokens, AdamW lr {args.lr:g}; "
          f"backend {backend}, {kernprop.get_num_threads()} threads, precision {args.precision}")
    X, y = corpus.batch("train", args.steps * args.batch_size, block, rng)
    warm = trainer.warmup(X[:2 * args.batch_size], y[:2 * args.batch_size], (X_val[:4], y_val[:4]))
    if warm > 2:
        print(f"kernels ready in {warm:.1f} s (compiled or loaded from Numba's cache)")
    bounds = np.linspace(0, args.steps, min(args.evals, args.steps) + 1).round().astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        rows = slice(lo * args.batch_size, hi * args.batch_size)
        history = trainer.fit(X[rows], y[rows], shuffle=False, verbose=1 if stderr_is_tty() else 0)
        val = trainer.evaluate(X_val, y_val)["loss"]
        print(f"step {hi:>5}/{args.steps}: train loss {history['loss'][0]:.3f}, val loss {val:.3f}, "
              f"{history['tokens_per_s'][0]:,.0f} tokens/s", flush=True)
    print(f"validation loss {val:.3f} nats/token (unigram entropy {unigram:.3f}) after "
          f"{time.perf_counter() - start:.0f} s")
    if args.save is not None:
        trainer.save(args.save)
        print(f"saved {args.save}")
    if args.sample > 0:
        prompt = corpus.val[:1]
        sample = model.generate(prompt, args.sample, temperature=args.temperature, rng=args.seed)
        print("sample:")
        print(corpus.decode(sample))
    return 0

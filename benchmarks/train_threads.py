"""A spot head's training step on one torch thread beside two, alternating in one process.

    python benchmarks/train_threads.py [--steps 1000] [--rounds 2]

The network has the default context head's shape (5 blocks x 64 PCs -> 64 hidden -> 32 output
axes -> 785 genes), batch 64, AdamW. Run it once on an idle machine and once beside another
CPU-bound process (e.g. ``yes > /dev/null``) to see why ``train.loop.one_cpu_thread`` trains
members on one thread: the step is too small for a second thread, which then waits at a
barrier for a time slice. Prints steps/s and CPU seconds per setting and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch


def context_shaped_step() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor,
                                   torch.Tensor]:
    """The network, optimiser and one batch of the default context head's shape."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(320, 64), torch.nn.GELU(),
                              torch.nn.Linear(64, 32), torch.nn.Linear(32, 785))
    return net, torch.optim.AdamW(net.parameters(), 1e-3), torch.randn(64, 320), torch.randn(64, 785)


def steps(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
          n: int) -> None:
    """``n`` optimiser steps of mean squared error."""
    for _ in range(n):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    net, opt, x, y = context_shaped_step()
    rate: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            steps(net, opt, x, y, 20)
            wall, cpu = time.perf_counter(), time.process_time()
            steps(net, opt, x, y, args.steps)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rate[threads].append(args.steps / wall)
            print(f"threads {threads}: {args.steps / wall:.0f} steps/s, CPU {cpu:.2f} s", flush=True)
    ratio = min(rate[1]) / max(rate[2])
    print(f"one thread / two threads, steps/s (worst of one vs best of two): {ratio:.2f}")


if __name__ == "__main__":
    main()

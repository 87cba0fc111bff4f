"""One way for the tests to start a torchrun-style group of CPU (gloo) worker processes.

The workers start from a forkserver, never by forking the pytest process: an earlier in-process test may have
started autograd's device threads there (a ``torch.compile``-d backward does), after which any backward in a
forked child fails ("Unable to handle autograd's threading in combination with fork-based multiprocessing"),
and a forked child would also lack the parent's zarr I/O thread. The forkserver is a fresh interpreter that
imports torch and cascadekit once (``PRELOAD``), so each worker forked from it starts in well under a second.
Arguments reach the workers pickled (tensors through torch's shared-memory reductions).
"""
from __future__ import annotations

import socket
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

START_METHOD = "forkserver"
# imported once in the forkserver (a missing module is skipped by multiprocessing); importing starts no threads
PRELOAD = ["torch", "torch.distributed", "cascadekit.generator.train", "cascadekit.generator.training.parallel",
           "cascadekit.generator.train_controlnet", "cascadekit.generator.train_stage_b", "cascadekit.codec.text",
           "transformers.models.clip.modeling_clip"]


def context():
    """The multiprocessing context the workers start in (for queues passed to them), forkserver preloaded."""
    ctx = mp.get_context(START_METHOD)
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the group's MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world: int, port: int, args: tuple) -> None:
    torch.set_num_threads(1)  # the ranks share the machine's cores
    fn(rank, world, port, *args)


def run_ranks(fn: Callable[..., None], world: int, args: tuple[Any, ...] = ()) -> None:
    """Run ``fn(rank, world, port, *args)`` in ``world`` worker processes and wait for all of them.

    ``fn`` must be a module-level function (pickled by name); ``port`` is one free port shared by the group.
    A worker's exception is raised here (``torch.multiprocessing.ProcessRaisedException`` with its traceback).
    """
    context()
    mp.start_processes(_entry, args=(fn, world, free_port(), tuple(args)), nprocs=world, join=True,
                       start_method=START_METHOD)

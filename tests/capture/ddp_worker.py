"""One rank of the two-process DistributedDataParallel test (run by torchrun; not a test)."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from capture_helpers import TinyNet, batches

from pytest_modelrules import Recorder


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial weights on every rank
    model = torch.nn.parallel.DistributedDataParallel(TinyNet())
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(out_dir, model, loss=loss_fn, optimizer=opt, save_interval=1):
        for x, y in batches(3, seed=100 + rank):  # each rank its own shard of the data
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

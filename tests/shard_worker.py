"""Run by ``tests/test_distributed.py`` under ``torchrun --nproc-per-node 2``: shard_map and
agree against plain loops, and an error on one rank raised on both. Writes one line per rank
to the folder given as the first argument."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from epsl import distributed
from epsl.errors import EpslError


def main() -> None:
    world = distributed.setup()
    out = Path(sys.argv[1]) / f"rank{world.rank}.txt"
    lines = []

    def fn(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = k % 3  # uneven, and an empty chunk
        return (torch.full((rows, 2), float(k)), torch.arange(rows) % 2 == 0)

    chunks = list(range(5))
    shared = distributed.shard_map(fn, chunks)
    plain = [fn(k) for k in chunks]
    equal = all(torch.equal(a, b) for s, p in zip(shared, plain, strict=True)
                for a, b in zip(s, p, strict=True))
    lines.append(f"shard_map equal {equal}")
    tensors = distributed.shard_map(lambda k: torch.tensor([k]), [7, 8, 9])
    lines.append(f"tensor outputs {[t.tolist() for t in tensors]}")
    mine = torch.tensor([1, 2, 3]) if world.rank == 0 else torch.tensor([5])
    lines.append(f"agree {distributed.agree(mine).tolist()}")

    def failing(k: int) -> torch.Tensor:
        if k == 1:
            raise RuntimeError("chunk 1 failed")
        return torch.zeros(1)

    try:
        distributed.shard_map(failing, [0, 1, 2, 3])
        lines.append("no error")
    except (RuntimeError, EpslError) as exc:
        lines.append(f"error {type(exc).__name__}: {exc}")
    # still in step: one more collective
    lines.append(f"after {distributed.all_sum([1.0])}")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

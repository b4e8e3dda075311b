"""fxswap over several processes: fit/distill and BlockSwap under a torchrun-style launch (2 gloo ranks on CPU).

The two-process tests start two ``python`` processes with the environment torchrun gives its workers (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), so fxswap's own detection initialises the group;
each rank saves what it saw and what it ended with, and the test compares them with one process's run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import fxswap
from fxswap.data.device import DeviceLoader
from fxswap.distillation import Distiller, evaluate, fit, load_checkpoint
from fxswap.distillation.checkpoint import save_checkpoint
from fxswap.errors import DistillError
from fxswap.search.plans import blockswap

ROOT = Path(__file__).resolve().parents[1]

# what each rank runs; argv: results folder, work folder
WORKER = textwrap.dedent('''
    import os, shutil, sys
    from pathlib import Path
    import torch
    from torch.utils.data import DataLoader, Dataset, TensorDataset
    import fxswap
    from fxswap.distillation import Distiller, fit
    from fxswap.errors import DistillError
    from fxswap.search.plans import blockswap

    results, work = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ["RANK"])

    class Seen(Dataset):
        """A data set that writes down every index it is asked for."""
        def __init__(self, x, y):
            self.x, self.y, self.seen = x, y, []
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            self.seen.append(int(i))
            return self.x[i], self.y[i]

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 10, (32,), generator=g)
    vx, vy = torch.randn(10, 3, 16, 16, generator=g), torch.randint(0, 10, (10,), generator=g)
    torch.manual_seed(0)
    teacher = fxswap.models.wrn(10, 1)

    def run(out, resume=False, on_epoch=None, teacher=teacher, **kw):
        torch.manual_seed(100 + rank)  # students differ per rank before fit: DDP must make them one
        student = fxswap.cheapen(teacher, "G(N/4)")
        data = Seen(x, y)
        hist = fit(Distiller(teacher, student, {"at": 1000.0, "kd": 0.9}), DataLoader(data, batch_size=4, shuffle=True),
                   DataLoader(TensorDataset(vx, vy), batch_size=4), epochs=2, preset="cosine", out_dir=out,
                   resume=resume, progress=False, device="cpu", on_epoch=on_epoch, precision="fp32", **kw)
        return student, hist, data.seen

    def keep_epoch_1(row):  # what a run killed after epoch 1 leaves on disk
        if row["epoch"] == 1:
            shutil.copytree(work / "full", work / "killed")

    student, hist, seen = run(work / "full", on_epoch=keep_epoch_1)
    resumed, hist_resumed, _ = run(work / "killed", resume=True)
    errors = {}
    bad = fxswap.models.wrn(10, 1)
    for what, kw in (("teacher", dict(teacher=bad if rank == 1 else teacher)), ("syncbn", dict(sync_batchnorm=True))):
        try:
            run(work / what, **kw)
        except DistillError as e:
            errors[what] = str(e)
    torch.manual_seed(0)
    batch = (torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))
    r = blockswap(fxswap.models.wrn(10, 1), "66k", batch, samples=5, candidates=["S", "G(N/4)", "B(2)"],
                  macs=False, tolerance=0.2, seed=3)
    torch.save({"student": student.state_dict(), "resumed": resumed.state_dict(), "history": hist,
                "history_resumed": hist_resumed, "seen": seen, "errors": errors,
                "search": [(c.plan, c.fisher, c.blocks) for c in r.candidates]}, results / f"rank{rank}.pt")
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both ranks' results and the work folder of one 2-process run of WORKER."""
    base = tmp_path_factory.mktemp("ddp")
    results, work = base / "results", base / "work"
    results.mkdir()
    work.mkdir()
    script = base / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, str(script), str(results), str(work)], env=env, cwd=base,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-4000:]}"
    return [torch.load(results / f"rank{r}.pt", weights_only=False) for r in range(2)], work, outputs


def _same_state(a: dict, b: dict, tol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=tol), k


def test_both_ranks_end_with_one_student_and_one_history(two_ranks):
    (r0, r1), _, _ = two_ranks
    _same_state(r0["student"], r1["student"])  # gradients averaged, buffers from rank 0: bit-identical
    def timeless(history):  # "seconds" is each rank's own clock
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert timeless(r0["history"]) == timeless(r1["history"]) and [h["epoch"] for h in r0["history"]] == [1, 2]


def test_each_rank_sees_a_disjoint_half_of_every_epoch(two_ranks):
    (r0, r1), _, _ = two_ranks
    for epoch in range(2):
        a, b = (r["seen"][16 * epoch: 16 * (epoch + 1)] for r in (r0, r1))
        assert len(a) == len(b) == 16 and not set(a) & set(b) and set(a) | set(b) == set(range(32))
    assert r0["seen"][:16] != r0["seen"][16:]  # set_epoch: every epoch its own shuffle


def test_one_writer(two_ranks):
    (r0, _), work, outputs = two_ranks
    files = sorted(p.name for p in (work / "full").iterdir())
    assert files == ["checkpoint.pt", "history.jsonl", "student_state_dict.pt"]
    rows = [json.loads(line) for line in (work / "full" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows == json.loads(json.dumps(r0["history"]))
    ckpt = load_checkpoint(work / "full" / "checkpoint.pt")
    assert ckpt["world_size"] == 2
    _same_state(torch.load(work / "full" / "student_state_dict.pt", weights_only=True), r0["student"])
    assert "Traceback" not in outputs[1]


def test_validation_covers_the_whole_set_once(two_ranks):
    """The last row's val_acc is the final student's accuracy on all 10 validation images, in one process."""
    (r0, _), _, _ = two_ranks
    teacher = fxswap.models.wrn(10, 1)
    student = fxswap.cheapen(teacher, "G(N/4)")
    student.load_state_dict(r0["student"])
    g = torch.Generator().manual_seed(0)
    torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 10, (32,), generator=g)
    vx, vy = torch.randn(10, 3, 16, 16, generator=g), torch.randint(0, 10, (10,), generator=g)
    v = evaluate(student, DataLoader(TensorDataset(vx, vy), batch_size=4), "cpu", amp=False)
    assert r0["history"][-1]["val_acc"] == v["acc"]
    assert abs(r0["history"][-1]["val_loss"] - v["loss"]) < 1e-6


def test_killed_and_resumed_equals_uninterrupted(two_ranks):
    (r0, r1), _, _ = two_ranks
    for r in (r0, r1):
        _same_state(r["resumed"], r0["student"], 1e-6)
    assert [h["epoch"] for h in r0["history_resumed"]] == [1, 2]


def test_another_teacher_on_one_rank_is_an_error_on_every_rank(two_ranks):
    (r0, r1), _, _ = two_ranks
    for r in (r0, r1):
        assert "the teacher differs between the processes" in r["errors"]["teacher"]
        assert "rank(s) [1]" in r["errors"]["teacher"]
        assert "needs GPUs" in r["errors"]["syncbn"]


def test_search_over_two_ranks_equals_one_process(two_ranks):
    (r0, r1), _, _ = two_ranks
    torch.manual_seed(0)
    batch = (torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run (OMP_NUM_THREADS=1): another thread count sums in another order
    try:
        one = blockswap(fxswap.models.wrn(10, 1), "66k", batch, samples=5, candidates=["S", "G(N/4)", "B(2)"],
                        macs=False, tolerance=0.2, seed=3)
    finally:
        torch.set_num_threads(threads)
    expected = [(c.plan, c.fisher, c.blocks) for c in one.candidates]
    assert len(expected) == 5
    assert r0["search"] == r1["search"] == expected


# -- one process: no launcher needed --------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 23), world=st.integers(1, 4), batch=st.integers(1, 5), train=st.booleans())
def test_device_loader_shards_partition_each_pass(n, world, batch, train):
    images = np.zeros((n, 4, 4, 3), np.uint8)
    loaders = [DeviceLoader(images, np.arange(n), batch_size=batch, train=train, seed=7).shard(r, world, even=train)
               for r in range(world)]
    seen = [sum((y.tolist() for _, y in loader), []) for loader in loaders]
    assert all(len(s) == loader.num_samples for s, loader in zip(seen, loaders))
    if train:  # even shares (the permutation's head repeated), the processes step together
        assert len({len(loader) for loader in loaders}) == 1 and set().union(*map(set, seen)) == set(range(n))
        assert sum(map(len, seen)) == -(-n // world) * world
    else:  # each image exactly once
        assert sorted(sum(seen, [])) == list(range(n))


def test_device_loader_shards_interleave_into_the_one_process_batch():
    """Rank r's batch k holds positions r, r + world, ... of a one-process batch k of world × batch_size,
    augmentations included."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    kw = dict(train=True, cutout=4, padding=2, seed=1)
    whole = list(DeviceLoader(images, np.arange(24), batch_size=6, **kw))
    base = DeviceLoader(images, np.arange(24), batch_size=3, **kw)
    shares = []
    for r in range(2):
        base.generator.manual_seed(1)
        shares.append(list(base.shard(r, 2)))
    for k, (x, y) in enumerate(whole):
        for r in range(2):
            assert torch.equal(shares[r][k][0], x[r::2]) and torch.equal(shares[r][k][1], y[r::2])


def test_resuming_with_another_number_of_processes_is_an_error(tmp_path):
    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
    fit(Distiller(None, torch.nn.Linear(4, 2)), loader, epochs=1, preset="cosine", out_dir=tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["world_size"] == 1
    ckpt["world_size"] = 2
    save_checkpoint(tmp_path / "checkpoint.pt", ckpt)
    with pytest.raises(DistillError, match=r"written by a run over 2 process\(es\); this run has 1"):
        fit(Distiller(None, torch.nn.Linear(4, 2)), loader, epochs=2, preset="cosine", out_dir=tmp_path,
            resume=True, progress=False)


def test_a_process_group_that_is_not_one_is_an_error():
    from fxswap.errors import FxswapError
    from fxswap.process_group import join

    with pytest.raises(FxswapError, match="torch.distributed is not initialised"):
        join("not a group")

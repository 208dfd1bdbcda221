"""One cimguard command on many processes: ``torch.distributed``, started by ``torchrun``.

``torchrun --nproc-per-node N -m cimguard COMMAND ...`` starts N copies of the same
command.  Every rank builds the same setup (model, crossbar, data); the work is split:

* **Monte Carlo**: chips by index (:func:`chip_range`); every chip keeps its own random
  stream, so the gathered accuracies equal the one-process run's, number for number.
* **Worst case and accuracy**: the evaluation data by sample (:func:`local_slice`); the
  margin gradient, the margin and the count of correct samples are summed over ranks
  (:func:`all_reduce_sum`), so every rank holds the same whole-set values and takes the
  same step.  Only the order of float additions differs from one process.
* **Training**: every mini-batch by sample; gradients are summed (:func:`sum_gradients`)
  before the optimiser step, and every rank draws the same noise from the same seed, so
  the replicated weights stay identical on every rank.

Only rank 0 prints and writes (stdout and stderr of the other ranks go to ``os.devnull``;
:mod:`cimguard.report` and the trainer's checkpoints write on rank 0 only).

**Errors.** A rank that fails publishes its one-line message in the rendezvous store
(:func:`stop_all_ranks`); a watcher thread on every rank polls for it, so ranks blocked in
a collective stop within a fraction of a second: rank 0 prints ``Error: <message>`` and
every rank exits with status 1.  torchrun then reports the failed workers as usual.

**Ctrl-C.** SIGINT does not interrupt a rank where it stands (the ranks would disagree
about which collective comes next).  It is noted, and the next collective carries the note:
when any rank has one, every rank raises ``KeyboardInterrupt`` at the same point, so the
solvers keep their best chip and the commands stop as in one process.

Without torchrun (``WORLD_SIZE`` unset or 1) nothing here is started and every helper is a
pass-through: the one-process path is unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterable, Sequence, TypeVar

import torch

from cimguard.errors import first_line

T = TypeVar("T")

#: How often the watcher looks for another rank's error (seconds).
POLL_SECONDS = 0.1
#: How long a failing rank waits for rank 0 to print its message before printing it itself.
ACK_SECONDS = 10.0
#: Timeout of one collective: a rank that vanished without a word still ends the run.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass
class _World:
    rank: int
    size: int
    store: Any
    """A client of torchrun's rendezvous store of its own (the error protocol's channel)."""
    stderr: Any
    """This process's real stderr (rank > 0 writes only its last words there)."""
    stop_requested: bool = False
    """Ctrl-C seen and not yet acted on together."""
    stopping: bool = False
    """The ranks have stopped together: further SIGINTs (torchrun forwards one) are ignored."""
    failed: bool = False
    """This rank is stopping the run with an error (reported once)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: threading.Event = field(default_factory=threading.Event)
    watcher: threading.Thread | None = None


_world: _World | None = None

_ERROR_KEY = "error"
_ACK_KEY = "error-printed"


#: What torchrun (or any ``env://`` launcher) sets for every process it starts.
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True when torchrun started this process as one of several (``WORLD_SIZE`` > 1)."""
    if not all(os.environ.get(name) for name in LAUNCHER_ENV):
        return False
    try:
        return int(os.environ["WORLD_SIZE"]) > 1
    except ValueError:
        return False


def active() -> bool:
    """True when this process is one rank of a multi-process run."""
    return _world is not None


def rank() -> int:
    return _world.rank if _world is not None else 0


def world_size() -> int:
    return _world.size if _world is not None else 1


def is_main() -> bool:
    """True on rank 0, the one that prints and writes (and in every one-process run)."""
    return _world is None or _world.rank == 0


def start() -> None:
    """Join torchrun's process group (gloo for CPU tensors, NCCL for CUDA tensors) from its env vars.

    Raises :class:`~cimguard.errors.CimguardError` (one line) when the group cannot be joined.
    """
    if _world is not None:
        return
    try:
        _join()
    except Exception as exc:  # noqa: BLE001 - a launcher or network problem is the user's to fix
        from cimguard.errors import CimguardError

        detail = first_line(exc)
        raise CimguardError(f"cannot join the torchrun process group ({detail})") from None


def _join() -> None:
    global _world
    import torch.distributed as dist

    if torch.cuda.is_available():
        # One GPU per rank: LOCAL_RANK's.  CPU tensors (small sums, objects) go through gloo.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    # A store client of our own: the watcher thread polls it while the main thread is in a collective.
    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                           timeout=timedelta(seconds=60), wait_for_workers=False)
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"cimguard/{run_id}/{attempt}/", client)
    world = _World(dist.get_rank(), dist.get_world_size(), store, sys.stderr)
    if world.rank != 0:
        devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        sys.stdout = devnull
        if not os.environ.get("CIMGUARD_DEBUG"):
            sys.stderr = devnull
    _world = world
    signal.signal(signal.SIGINT, _note_interrupt)
    world.watcher = threading.Thread(target=_watch, args=(world,), name="cimguard-rank-watcher", daemon=True)
    world.watcher.start()
    import atexit

    atexit.register(_finish)


def _finish() -> None:
    world = _world
    if world is None:
        return
    world.finished.set()
    if world.watcher is not None:
        world.watcher.join(timeout=2 * POLL_SECONDS + 1)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _note_interrupt(signum: int, frame: Any) -> None:
    world = _world
    if world is not None and not world.stopping:
        world.stop_requested = True


def _watch(world: _World) -> None:
    """Stop this rank as soon as another rank has published an error."""
    while not world.finished.wait(POLL_SECONDS):
        try:
            if not world.store.check([_ERROR_KEY]):
                continue
            failed_rank, _, message = world.store.get(_ERROR_KEY).decode(errors="replace").partition("\t")
        except Exception:  # noqa: BLE001 - the store is gone: the run is ending anyway
            return
        with world.lock:
            if world.failed:  # this rank's own error: the main thread reports it
                return
            world.failed = True
        if world.rank == 0:
            print(f"Error: {message} (rank {failed_rank})", file=world.stderr, flush=True)
            try:
                world.store.set(_ACK_KEY, "1")
            except Exception:  # noqa: BLE001
                pass
        os._exit(1)


def stop_all_ranks(message: str, exit_code: int = 1) -> None:
    """This rank failed with ``message`` (one line): make every rank stop.

    On rank 0 it returns, and the caller prints the message as usual.  On any other
    rank it never returns: rank 0 prints the message, then this rank exits.
    """
    world = _world
    if world is None:
        return
    with world.lock:
        already = world.failed
        world.failed = True
    if already:  # rank 0's watcher is already reporting another rank's error
        os._exit(exit_code)
    try:
        world.store.set(_ERROR_KEY, f"{world.rank}\t{message}")
        if world.rank == 0:
            world.store.set(_ACK_KEY, "1")
            return
        waited = 0.0
        while waited < ACK_SECONDS and not world.store.check([_ACK_KEY]):
            threading.Event().wait(POLL_SECONDS)
            waited += POLL_SECONDS
        if world.store.check([_ACK_KEY]):
            os._exit(exit_code)
    except Exception:  # noqa: BLE001 - no store: say it here
        if world.rank == 0:
            return
    print(f"Error: {message} (rank {world.rank})", file=world.stderr, flush=True)
    os._exit(exit_code)


# -- splitting the work --------------------------------------------------------------------------


def local_slice(count: int) -> slice:
    """This rank's contiguous part of ``count`` items (parts differ in size by at most one)."""
    if _world is None:
        return slice(0, count)
    return slice(count * _world.rank // _world.size, count * (_world.rank + 1) // _world.size)


def mini_batches(count: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive mini-batches of ``count`` samples, each split over the ranks.

    One process: plain batches of ``batch_size``.  Under torchrun a last batch with fewer
    samples than ranks is merged into the one before, so no rank is ever left with no
    sample (an empty forward pass fails on many exported graphs, e.g. ``Reshape [0, -1]``).
    """
    bounds = [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    if _world is None:
        return bounds
    if count < _world.size:
        from cimguard.errors import CimguardError

        raise CimguardError(f"{count} samples cannot be shared by {_world.size} processes; use fewer processes")
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < _world.size:
        bounds[-2:] = [(bounds[-2][0], count)]
    return bounds


def chip_range(samples: int) -> range:
    """The Monte Carlo chip indices this rank evaluates (all of them in one process)."""
    part = local_slice(samples)
    return range(part.start, part.stop)


# -- collectives -----------------------------------------------------------------------------------


def _stop_together(flag: float) -> None:
    if flag > 0:
        assert _world is not None
        _world.stop_requested = False
        _world.stopping = True
        raise KeyboardInterrupt


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Element-wise sums over all ranks, in one collective; each result keeps its tensor's shape and dtype.

    The sum is taken in float64 (exact for counts below 2**53, correctly rounded for
    float32 values), so every rank receives the same bits.  It is also where the ranks
    agree on a Ctrl-C: when any rank has seen one, every rank raises
    ``KeyboardInterrupt`` here.  One process: the tensors unchanged.
    """
    if _world is None:
        return list(tensors)
    import torch.distributed as dist

    device = tensors[0].device if tensors else torch.device("cpu")
    parts = [t.detach().reshape(-1).to(device=device, dtype=torch.float64) for t in tensors]
    parts.append(torch.tensor([1.0 if _world.stop_requested else 0.0], dtype=torch.float64, device=device))
    flat = torch.cat(parts)
    dist.all_reduce(flat)
    _stop_together(float(flat[-1]))
    result, offset = [], 0
    for tensor in tensors:
        result.append(flat[offset : offset + tensor.numel()].reshape(tensor.shape).to(tensor.dtype))
        offset += tensor.numel()
    return result


def sum_floats(*values: float) -> tuple[float, ...]:
    """Python numbers summed over all ranks (one process: unchanged)."""
    if _world is None:
        return values
    (total,) = all_reduce_sum([torch.tensor(values, dtype=torch.float64)])
    return tuple(float(v) for v in total)


def sum_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Replace every parameter's ``.grad`` by its sum over ranks (data parallelism; one process: no-op)."""
    if _world is None:
        return
    with_grad = [p for p in parameters if p.grad is not None]
    for parameter, total in zip(with_grad, all_reduce_sum([p.grad for p in with_grad])):
        parameter.grad.copy_(total)


def gather_chips(values: Sequence[float], chips: range, samples: int) -> list[float]:
    """Every rank's per-chip values in chip order (this rank holds ``chips``); exact, no float arithmetic.

    A rank stopped by Ctrl-C passes what it has; the collective then raises
    ``KeyboardInterrupt`` on every rank.
    """
    if _world is None:
        return list(values)
    board = torch.zeros(samples, dtype=torch.float64)
    board[chips.start : chips.start + len(values)] = torch.tensor(list(values), dtype=torch.float64)
    (total,) = all_reduce_sum([board])  # every chip is non-zero on one rank only: x + 0 is exact
    return [float(v) for v in total]


def stop_requested() -> bool:
    """True when Ctrl-C was seen here: a long local loop should stop and reach its collective."""
    return _world is not None and _world.stop_requested


def gather_objects(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank (one process: ``[value]``)."""
    if _world is None:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * _world.size
    dist.all_gather_object(values, value)
    return values


def from_main(read: Callable[[], T]) -> T:
    """``read()`` on rank 0, its result sent to every rank (e.g. a checkpoint only rank 0's host has)."""
    if _world is None:
        return read()
    import torch.distributed as dist

    box = [read() if _world.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]

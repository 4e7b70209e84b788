"""``whisper-at train``: train a TL-TR head on stored features (the Whisper-AT recipe).

Recipe (``src/whisper_at_train`` of the official repository): BCE-with-logits loss, Adam
(betas 0.95/0.999, weight decay 5e-7), learning rate x0.75 every 5 epochs from epoch 15, batch 48,
balanced sampling, mixup 0.5, time mask 10, label smoothing 0.1. One "epoch" stops after 10% of
the iterations of a pass over the data (``--epoch_fraction 0.1``), so 30 epochs see the data
about 3 times. Defaults by size, as the official README's table: TL-TR on medium/large
(width >= 1024) lr 5e-5, 30 epochs, weights averaged over epochs 16-30; tiny/base/small and every
TL-TR-512 head lr 1e-4 (TL-TR-512 on medium/large: 30 epochs, 16-30); tiny/base/small 50 epochs,
averaged over 21-50. One addition (``--no_prior_init`` turns it off): the output biases start at
the log-odds of each class's frequency in the training data, which makes small or few-class
sets train far faster (the official heads start from PyTorch's default initialisation).

Every epoch writes ``epoch_NNN.pth`` (the head) and then ``last.pth`` (head, optimiser,
scheduler, log: what ``--resume`` continues from), atomically. Sampling and augmentation are
seeded by (seed, epoch), so a resumed run repeats an uninterrupted one.

Multi-process: ``torchrun --nproc_per_node N -m whisper_at.research train ...`` (gloo on CPU,
nccl on GPU). ``--batch_size`` is the global batch, split evenly over the processes, which see the
same global batches as a single process would; only rank 0 evaluates and writes files.
"""

import argparse
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..head import TLTR
from .checkpoint import average_epochs, epoch_path, load_head_state, save_head
from .common import save_torch, write_json
from .data import EpochSampler, FeatureDataset, balanced_weights, split
from .metrics import tagging_metrics
from .store import FeatureSet


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainOptions:
    lr: Optional[float] = _opt(None, "learning rate (default: by size, see above)")
    epochs: Optional[int] = _opt(None, "epochs (default: 30 medium/large, 50 smaller)")
    avg_start: Optional[int] = _opt(None, "first epoch averaged into best_avg.pth")
    avg_end: Optional[int] = _opt(None, "last epoch averaged (default: the last)")
    batch_size: int = _opt(48, "global batch size")
    low_compute: bool = _opt(False, "TL-TR-512 head (projects features to 512 dims)")
    num_classes: Optional[int] = _opt(None, "classes (default: from the features' labels)")
    epoch_fraction: float = _opt(0.1, "fraction of a pass over the data per epoch")
    loss: str = _opt("bce", "bce (multi-label) or ce (single-label, e.g. ESC-50)")
    balanced: bool = _opt(True, "balanced sampling (weights 1 / class count)")
    mixup: float = _opt(0.5, "probability of mixing a clip with another")
    timem: int = _opt(10, "max pooled frames of the time mask (0: off)")
    label_smooth: float = _opt(0.1, "label smoothing")
    lr_decay_start: int = _opt(15, "first epoch of learning-rate decay")
    lr_decay_step: int = _opt(5, "epochs between decays")
    lr_decay: float = _opt(0.75, "decay factor")
    weight_decay: float = _opt(5e-7, "Adam weight decay")
    prior_init: bool = _opt(True, "start output biases at the classes' log-odds in the data")
    seed: int = _opt(0, "seed of initialisation, sampling and augmentation")
    eval_fold: Optional[int] = _opt(None, "hold out this fold for evaluation (ESC-50)")
    eval_fraction: float = _opt(0.0, "hold out this random fraction for evaluation")
    workers: int = _opt(0, "DataLoader worker processes")


_NONE_TYPES = {"lr": float}


class _Chunks(torch.nn.Module):
    """A head whose ``forward`` is ``forward_chunks`` (what DistributedDataParallel calls)."""

    def __init__(self, head: TLTR):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.forward_chunks(x)


def recipe_options(options: TrainOptions, n_state: int) -> TrainOptions:
    """Fill the size-dependent defaults (lr, epochs, averaging range) of the recipe."""
    large = n_state >= 1024
    lr = 5e-5 if large and not options.low_compute else 1e-4
    epochs, avg_start = (30, 16) if large else (50, 21)
    epochs = options.epochs or epochs
    avg_start = options.avg_start or min(avg_start, epochs)
    return replace(
        options,
        lr=options.lr or lr,
        epochs=epochs,
        avg_start=avg_start,
        avg_end=options.avg_end or epochs,
    )


def init_output_bias(head: TLTR, targets: np.ndarray, floor: float = 1e-3):
    """Set the output biases to the log-odds of the classes' frequencies in ``targets``
    (clamped to [floor, 1 - floor]), so training does not start by pushing the hundreds of
    absent classes down through the shared layers."""
    prior = torch.as_tensor(targets.mean(axis=0), dtype=torch.float32).clamp(floor, 1 - floor)
    with torch.no_grad():
        head.mlp_layer[-1].bias.copy_(torch.log(prior / (1 - prior)))


def evaluate(head: TLTR, features: FeatureSet, num_classes: int, batch_size=64) -> dict:
    """Metrics (and mean BCE loss) of ``head`` on a feature set, no augmentation."""
    device = next(head.parameters()).device
    loader = DataLoader(FeatureDataset(features, num_classes), batch_size=batch_size)
    head.eval()
    scores, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            scores.append(head.forward_chunks(x.to(device)).float().cpu())
            targets.append(y)
    scores, targets = torch.cat(scores), torch.cat(targets)
    result = tagging_metrics(scores.numpy(), targets.numpy())
    result["loss"] = float(torch.nn.functional.binary_cross_entropy_with_logits(scores, targets))
    return result


class _Dist:
    """Process group of a torchrun launch (or a single process)."""

    def __init__(self, device: Optional[str] = None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.owned = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self.owned = True
        self.rank = dist.get_rank() if self.world > 1 else 0
        if device is None and torch.cuda.is_available():
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        self.device = torch.device(device or "cpu")
        self.main = self.rank == 0

    def sum(self, *values: float):
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.owned:
            dist.destroy_process_group()


def _loss_fn(kind: str):
    if kind == "bce":
        return torch.nn.BCEWithLogitsLoss()
    if kind == "ce":
        return torch.nn.CrossEntropyLoss()  # soft (mixed / smoothed) targets are allowed
    raise ValueError(f"loss must be 'bce' or 'ce', got {kind!r}")


def train(
    features_dir: str,
    out_dir: str,
    options: TrainOptions = TrainOptions(),
    eval_dir: Optional[str] = None,
    resume: bool = False,
    device: Optional[str] = None,
    verbose: bool = True,
) -> dict:
    """Train a head on ``features_dir`` into ``out_dir``; returns the run log (as ``log.json``)."""
    ctx = _Dist(device)
    try:
        return _train(ctx, features_dir, out_dir, options, eval_dir, resume, verbose)
    finally:
        ctx.close()


def _train(ctx: _Dist, features_dir, out_dir, options, eval_dir, resume, verbose) -> dict:
    features = FeatureSet(features_dir)
    n_layer, _, n_state = features.shape
    options = recipe_options(options, n_state)
    num_classes = options.num_classes or features.num_classes
    if not num_classes:
        raise ValueError("the features have no labels: extract with --labels, or --num_classes")
    train_set, eval_set = split(features, options.eval_fold, options.eval_fraction, options.seed)
    if eval_dir:
        eval_set = FeatureSet(eval_dir)
    if options.batch_size % ctx.world:
        raise ValueError(f"batch_size {options.batch_size} is not divisible by {ctx.world} procs")

    dataset = FeatureDataset(
        train_set, num_classes, options.mixup, options.timem, options.label_smooth, options.seed
    )
    torch.manual_seed(options.seed)
    head = TLTR(n_layer, n_state, options.low_compute, n_classes=num_classes).to(ctx.device)
    if options.prior_init:
        init_output_bias(head, dataset.targets)
    optimizer = torch.optim.Adam(
        head.parameters(), options.lr, betas=(0.95, 0.999), weight_decay=options.weight_decay
    )
    milestones = list(range(options.lr_decay_start, 1000, options.lr_decay_step))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, options.lr_decay)
    log = {"options": asdict(options), "num_classes": num_classes, "epochs": []}
    last = os.path.join(out_dir, "last.pth")
    if resume and os.path.exists(last):
        state = torch.load(last, map_location=ctx.device, weights_only=True)
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        log["epochs"] = state["log"]
    start = len(log["epochs"]) + 1
    model = _Chunks(head)
    if ctx.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)

    weights = balanced_weights(dataset.targets) if options.balanced else None
    sampler = EpochSampler(dataset, ctx.world, ctx.rank, options.seed, weights)
    loader = DataLoader(
        dataset,
        options.batch_size // ctx.world,
        sampler=sampler,
        drop_last=True,
        num_workers=options.workers,
    )
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} training clips make no batch of {options.batch_size}")
    steps = max(1, math.ceil(options.epoch_fraction * len(loader)))
    loss_fn = _loss_fn(options.loss)
    if ctx.main:
        os.makedirs(out_dir, exist_ok=True)
        write_json(log["options"], os.path.join(out_dir, "options.json"))

    for epoch in range(start, options.epochs + 1):
        began = time.time()
        sampler.set_epoch(epoch)
        dataset.epoch = epoch
        model.train()
        total = count = 0.0
        for step, (x, y) in enumerate(loader):
            if step == steps:
                break
            loss = loss_fn(model(x.to(ctx.device)), y.to(ctx.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
            count += len(x)
        total, count = ctx.sum(total, count)
        record = {"epoch": epoch, "train_loss": total / count, "lr": scheduler.get_last_lr()[0]}
        scheduler.step()
        if ctx.main:
            if eval_set is not None:
                record.update(evaluate(head, eval_set, num_classes))
            record["seconds"] = round(time.time() - began, 3)
            log["epochs"].append(record)
            _save_epoch(out_dir, epoch, head, optimizer, scheduler, log)
            if verbose:
                print(_describe(record), flush=True)
        ctx.barrier()

    if ctx.main:
        end = min(options.avg_end, options.epochs)
        averaged = average_epochs(out_dir, min(options.avg_start, end), end)
        log["average"] = {"epochs": averaged}
        if eval_set is not None:
            head.load_state_dict(load_head_state(os.path.join(out_dir, "best_avg.pth")))
            log["average"].update(evaluate(head, eval_set, num_classes))
        write_json(log, os.path.join(out_dir, "log.json"))
        if verbose:
            print(
                f"best_avg.pth = mean of epochs {averaged[0]}..{averaged[-1]}: "
                + _describe(log["average"]),
                flush=True,
            )
    ctx.barrier()
    return log


def _save_epoch(out_dir: str, epoch: int, head: TLTR, optimizer, scheduler, log: dict):
    save_head(head.state_dict(), epoch_path(out_dir, epoch))
    state = {
        "head": head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "log": log["epochs"],
    }
    save_torch(state, os.path.join(out_dir, "last.pth"))  # the commit point of the epoch
    write_json(log, os.path.join(out_dir, "log.json"))


def _describe(record: dict) -> str:
    keys = ("epoch", "train_loss", "loss", "mAP", "mAUC", "acc", "lr")
    parts = []
    for key in keys:
        value = record.get(key)
        if isinstance(value, float) and not np.isnan(value):
            parts.append(f"{key} {value:.4g}")
        elif isinstance(value, int):
            parts.append(f"{key} {value}")
    return "  ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="whisper-at train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("features_dir", help="training features (from `whisper-at features`)")
    parser.add_argument("out", help="run directory (checkpoints, log.json, best_avg.pth)")
    parser.add_argument("--eval_dir", help="evaluation features (e.g. the AudioSet eval set)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pth")
    parser.add_argument("--device", default=None)
    defaults = TrainOptions()
    for option in fields(TrainOptions):
        default = getattr(defaults, option.name)
        if isinstance(default, bool):
            flag = f"--no_{option.name}" if default else f"--{option.name}"
            action = "store_false" if default else "store_true"
            parser.add_argument(flag, dest=option.name, action=action, help=option.metadata["help"])
            continue
        kind = type(default) if default is not None else _NONE_TYPES.get(option.name, int)
        parser.add_argument(
            f"--{option.name}", type=kind, default=default, help=option.metadata["help"]
        )
    args = parser.parse_args(argv)
    options = TrainOptions(**{f.name: getattr(args, f.name) for f in fields(TrainOptions)})
    train(args.features_dir, args.out, options, args.eval_dir, args.resume, args.device)
    return 0

"""``python -m cunet.train``: train the U-Net, on the synthetic EM data or on yours.

    python -m cunet.train                          # defaults for this machine (says what it chose)
    python -m cunet.train --data ../shared/data/isbi2012 --steps 2000
    python -m cunet.train --resume runs/unet/checkpoint.npz --steps 4000

Each step takes ``--batch`` random augmented tiles (cunet.data.TrainingSampler: sample k
is a function of (seed, k), drawn ahead by ``--workers`` processes), runs the forward pass,
the weighted cross-entropy, the backward pass and one SGD-with-momentum update. On a GPU
the loop never waits for the device within a step: losses and step times (CUDA events)
are read back every ``--sync-every`` steps, and checked for divergence there. Every step
is logged to ``<out>/log.jsonl`` (cunet.runlog: whole lines; at resume the log is cut back
to the checkpoint's step and marked); ``<out>/checkpoint.npz`` is written atomically every
``--checkpoint-every`` steps, at the end, and on Ctrl-C or SIGTERM; ``--resume`` continues a
run exactly (on ``cpu``, bit for bit). A folder that holds a run is never reused by a new
one: ``--out`` must be new or empty. Validation metrics on held-out images
are printed before training, every ``--val-every`` steps and at the end, and the loss
curve is saved as ``<out>/loss.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from cunet.autograd import Tensor
from cunet.checkpoint import CheckpointError, load_checkpoint, remove_stale_temporaries, save_checkpoint
from cunet.data import AugmentConfig, BatchStream, TrainingSampler, label_offset, load_dataset, make_split, make_synthetic, \
    register
from cunet.device import DEVICE_NAMES, Device, add_math_argument, get_device
from cunet.loss import weighted_cross_entropy
from cunet.malis import malis_weights
from cunet.isbi import score_stack
from cunet.metrics import dice, iou, seg
from cunet.optim import SGD, WeightAverage
from cunet.predict import USER_ERRORS, predict_probabilities, softmax
from cunet.runlog import append_record, cut_log_at, read_log
from cunet.scale.data_parallel import GradientAverager, World, mpi_world, rank_seed
from cunet.unet import MAX_INPUT_SHIFT, UNet, check_input_size, input_size_for_output, output_size

# The paper's network: what a GPU runs by default. The learning rate is cunet's: with the
# paper's momentum of 0.99 an SGD step is effectively 100 x lr, and on the weighted,
# pixel-averaged loss lr = 0.01 diverged within 150 steps (base 16, measured on cpu) while
# 0.001 trained steadily.
PAPER = dict(tile=572, base=64, depth=5, steps=2000, lr=0.001)
# A CPU-only machine gets a smaller network (depth 4, base 16: 0.48 M parameters) that
# trains visibly in under ten minutes: 3.9 min for the 2000 steps on 2 cores, 0.11 s per
# step, held-out pixel error 0.061 -> 0.039 and Rand error 0.985 -> 0.227 by the challenge's
# method (2026-11-30; the default leaves room for a slower or busier machine).
CPU_LAPTOP = dict(tile=284, base=16, depth=4, steps=2000, lr=0.001)

# Named recipes (--preset): every setting of a run that is not the data. Options given on
# the command line override them. README, "The ISBI 2012 recipe", has the measurements.
PRESETS = {
    # The best use of one hour of a 2-core CPU on ISBI 2012 found so far: the small
    # network of CPU_LAPTOP, trained 11x longer, the learning rate divided by 10 for the
    # last quarter, the images registered to their labels' grid (they sit 0.6 px off) and
    # the weight map without its class balance: held-out pixel error 0.0444-0.0449 with
    # rotation averaging over three seeds (0.0472-0.0479 on the images as given, with the
    # paper's w_c), Rand error 0.071-0.108 (0.089-0.098 before). 18-20 min on the 2-core
    # AMD EPYC, idle (README: the recipe, every trial and the seeds).
    "isbi-cpu-1h": dict(CPU_LAPTOP, steps=22000, lr_drops=[17000], val_every=2000, checkpoint_every=500,
                        input_shift=None, class_balance=False),
    # The paper's network and settings, for a GPU: 572 tiles, base 64, depth 5, batch 1,
    # momentum 0.99, drop-out 0.5, w0 = 10, sigma = 5. The paper does not give its step count
    # (it trained for 10 hours on a 6 GB Titan); 20000 steps is ~8 min of a GPU at 45 img/s.
    "paper": dict(PAPER, steps=20000, val_every=2000, checkpoint_every=1000),
}
PRESET_NEEDS_DATA = {"isbi-cpu-1h": "ISBI 2012 (--data ../shared/data/isbi2012)"}


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in every checkpoint."""

    tile: int
    base: int
    depth: int
    steps: int
    lr: float
    lr_drops: list[int] = field(default_factory=list)  # steps after which lr is multiplied by LR_DROP_FACTOR
    lr_schedule: str = "step"  # "step": lr, times LR_DROP_FACTOR at each drop; "cosine": lr down to 0 over the run
    momentum: float = 0.99
    weight_decay: float = 0.0
    weight_average: float = 0.0  # decay of the weights' running average (WeightAverage); 0: none kept
    batch: int = 1
    seed: int = 0
    dropout: float = 0.5
    w0: float = 10.0
    sigma: float = 5.0
    class_balance: bool = True  # the weight map's w_c (the paper's); False: 1 everywhere
    elastic_sigma: float = 10.0  # px std of the elastic deformation's coarse displacements (the paper's 10)
    malis: float = 0.0  # weight of the MALIS map added to the weight map (cunet.malis); 0: none, the paper's loss
    malis_from: int = 0  # added to the steps after this one (like lr_drops)
    data: str | None = None
    synthetic_images: int = 10
    val_fraction: float = 0.2
    augment: bool = True
    val_every: int = 0
    checkpoint_every: int = 50
    input_mean: float | None = None  # measured on the training images when the run starts
    input_std: float | None = None
    # (dy, dx) px: the training images are registered to their labels' grid by this offset
    # (cunet.data.register) and so is every image the model predicts; None: measured on
    # the training images when the run starts (--input-shift auto).
    input_shift: list[float] | None = field(default_factory=lambda: [0.0, 0.0])
    notes: list[str] = field(default_factory=list)


# How many worker processes draw samples ahead, and how many steps run between two reads
# of the losses, by default. A cpu step uses every core itself, and an opencl (PoCL) step
# too, so their samples are drawn in line and each loss is read at once. A GPU needs its
# samples drawn ahead: ~37 ms of one core per augmented 572 tile, one worker delivers ~23
# samples/s (README: the sampler table), against a 10-20 ms step. Reading a loss back waits
# until the GPU has run everything queued before it, so it is done every GPU_SYNC_EVERY steps.
GPU_SYNC_EVERY = 20


def default_workers(device: Device, cpu_count: int | None = None) -> int:
    """Sampler processes for ``device``: none on cpu/opencl; on cuda up to 6, leaving a core for the loop."""
    if device.name != "cuda":
        return 0
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, min(6, cores - 1))


LR_DROP_FACTOR = 0.1


LR_SCHEDULES = ("step", "cosine")


def lr_at(config: TrainConfig, step: int) -> float:
    """The learning rate of step ``step + 1``: with the "step" schedule ``lr`` times 0.1 for
    every drop already passed; with "cosine" lr (1 + cos(pi step / steps)) / 2, from lr at the
    first step smoothly down to ~0 at the last (Loshchilov and Hutter's SGDR, one cycle)."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
    return config.lr * LR_DROP_FACTOR ** sum(step >= drop for drop in config.lr_drops)


# Settings a resumed run may change; everything else must match the checkpoint.
RESUMABLE_OVERRIDES = {"steps", "val_every", "checkpoint_every"}


class Diverged(RuntimeError):
    """The loss or the weights became NaN or infinite."""


def parse_args(argv=None) -> argparse.Namespace:
    """The command line. Options left unset get device-dependent defaults (see resolve_config)."""
    p = argparse.ArgumentParser(prog="python -m cunet.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe: " + "; ".join(
        f"{name}: tile {v['tile']}, base {v['base']}, depth {v['depth']}, {v['steps']} steps"
        for name, v in PRESETS.items()) + " (options given here override it)")
    p.add_argument("--device", choices=DEVICE_NAMES, default="auto", help="where to train (default auto: cuda if CuPy finds a GPU, else cpu)")
    p.add_argument("--kernels", choices=("cuda", "numba"), default="cuda", help="on cuda: CUDA C kernels or the Numba alternates for memory-bound ops")
    add_math_argument(p)
    p.add_argument("--data", help="ISBI folder (train-volume.tif + train-labels.tif) or images/ + labels/ folder; default: synthetic EM data")
    p.add_argument("--synthetic-images", type=int, help="how many synthetic 512x512 images to generate without --data (default 10)")
    p.add_argument("--steps", type=int, help=f"total training steps (GPU default {PAPER['steps']}; CPU default {CPU_LAPTOP['steps']})")
    p.add_argument("--tile", type=int, help=f"input tile size (GPU default {PAPER['tile']}; CPU default {CPU_LAPTOP['tile']})")
    p.add_argument("--base", type=int, help=f"channels of the first level (GPU default {PAPER['base']}; CPU default {CPU_LAPTOP['base']})")
    p.add_argument("--depth", type=int, help=f"levels (GPU default {PAPER['depth']}; CPU default {CPU_LAPTOP['depth']})")
    p.add_argument("--lr", type=float, help=f"learning rate (GPU default {PAPER['lr']}; CPU default {CPU_LAPTOP['lr']})")
    p.add_argument("--lr-drops", type=_step_list, help="steps after which the learning rate is divided by 10, "
                   "comma-separated (default: none; the isbi-cpu-1h preset: 17000)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="step: lr divided by 10 at each --lr-drops step "
                   "(default); cosine: lr falls along half a cosine to ~0 at --steps (no drops)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.99, the paper's)")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay (default 0)")
    p.add_argument("--weight-average", type=float, metavar="DECAY",
                   help="keep a running average of the weights, decay per step (0.9995: over ~2000 steps); "
                        "validation, predict and evaluate use it (default 0: none)")
    p.add_argument("--batch", type=int, help="tiles per step (default 1: the paper's one large tile)")
    p.add_argument("--seed", type=int, help="seed for weights, data, augmentation and drop-out (default 0)")
    p.add_argument("--dropout", type=float, help="drop-out probability at the end of the contracting path (default 0.5)")
    p.add_argument("--w0", type=float, help="border weight w0 of the weight map (default 10)")
    p.add_argument("--sigma", type=float, help="border width sigma of the weight map in pixels (default 5)")
    p.add_argument("--class-balance", type=_on_off, metavar="on|off",
                   help="the weight map's class-balancing term w_c: on (the paper's, the default) or off (w_c = 1; "
                        "the isbi-cpu-1h preset: off)")
    p.add_argument("--elastic-sigma", type=float, metavar="PX",
                   help="strength of the elastic deformation: std in pixels of its 3x3 grid of displacements "
                        "(default 10, the paper's; 0: none)")
    p.add_argument("--malis", type=float, metavar="WEIGHT",
                   help="add WEIGHT x the MALIS map to the weight map: extra weight on the pixels that decide "
                        "the Rand error, from each step's own prediction (cunet/malis.py; default 0: none; "
                        "reads the logits back every step, a sync on a GPU)")
    p.add_argument("--malis-from", type=int, metavar="STEP",
                   help="add the MALIS map to the steps after step STEP, like --lr-drops (default 0: every step; "
                        "start it once the network draws membranes: from step 0 one of two ISBI runs "
                        "collapsed to its untrained output)")
    p.add_argument("--input-shift", type=_input_shift, metavar="auto|DY,DX",
                   help="register the images to their labels' pixel grid: 'auto' measures the offset on the "
                        "training images (cunet.data.register; ISBI 2012's labels sit ~0.6 px above theirs), "
                        "DY,DX gives it in pixels (default 0,0: none; the isbi-cpu-1h preset: auto)")
    p.add_argument("--val-every", type=int, help="validate every N steps (default: only before and after)")
    p.add_argument("--checkpoint-every", type=int, help="write the checkpoint every N steps (default 50)")
    p.add_argument("--out", help="output folder (default runs/<time>; with --resume the checkpoint's folder)")
    p.add_argument("--resume", help="continue from this checkpoint")
    p.add_argument("--workers", type=int, help="processes that draw samples ahead (default: 0 on cpu and opencl; "
                                               "on cuda one per core but one, at most 6); results do not depend on it")
    p.add_argument("--sync-every", type=int, help=f"read losses back and check them every N steps (default: 1, on cuda "
                                                  f"{GPU_SYNC_EVERY}); results do not depend on it")
    p.add_argument("--quiet", action="store_true", help="no progress bar, only the summary lines")
    return p.parse_args(argv)


def _step_list(text: str) -> list[int]:
    """'17000' or '15000,20000' -> [15000, 20000] (argparse type for --lr-drops)."""
    try:
        steps = sorted(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected step numbers separated by commas, e.g. 17000 or 15000,20000; "
                                         f"got {text!r}") from None
    if any(step < 1 for step in steps):
        raise argparse.ArgumentTypeError(f"steps start at 1, got {text!r}")
    return steps


def _on_off(text: str) -> bool:
    """'on' or 'off' (argparse type for --class-balance)."""
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def _input_shift(text: str) -> list[float] | str:
    """'auto' or 'DY,DX' (argparse type for --input-shift)."""
    if text == "auto":
        return text
    try:
        dy, dx = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or two pixel offsets DY,DX, e.g. 0.6,0.15; got {text!r}") from None
    return [dy, dx]


def resolve_config(args: argparse.Namespace, device: Device) -> TrainConfig:
    """Fill unset options: from --preset if given, else the paper's network on a GPU and the
    laptop settings elsewhere; note why."""
    if getattr(args, "preset", None):
        defaults, why = PRESETS[args.preset], f"--preset {args.preset}"
        if args.preset in PRESET_NEEDS_DATA and args.data is None:
            raise ValueError(f"--preset {args.preset} is a recipe for {PRESET_NEEDS_DATA[args.preset]}; give --data")
    elif device.name == "cuda":
        defaults, why = PAPER, "defaults for a GPU: the paper's network (572 tiles, base 64, depth 5)"
    else:
        defaults, why = CPU_LAPTOP, (f"defaults for no GPU ({device.name}): a smaller U-Net that trains in under "
                                     "10 minutes on 2 cores; pass --tile 572 --base 64 --depth 5 for the paper's network")
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    notes = [why] if any(getattr(args, k) is None for k in defaults) else []
    extra = {k: getattr(args, k) for k in ("lr_drops", "lr_schedule", "momentum", "weight_decay", "weight_average",
                                           "batch", "seed", "dropout", "w0", "sigma", "elastic_sigma", "val_every",
                                           "checkpoint_every", "data", "synthetic_images", "input_shift",
                                           "class_balance", "malis", "malis_from")
             if getattr(args, k) is not None and k not in chosen}
    if args.lr_schedule == "cosine" and args.lr_drops is None and chosen.get("lr_drops"):
        chosen["lr_drops"] = []   # the preset's drops are its step schedule's
    config = TrainConfig(**chosen, **extra, notes=notes)
    if config.input_shift == "auto":
        config.input_shift = None  # measured when the data is loaded
    if config.data is not None:  # stored resolved, so the run can be resumed from any directory
        config.data = str(Path(config.data).resolve())
    validate_config(config)
    return config


def validate_config(c: TrainConfig) -> None:
    """Refuse settings that cannot work, saying what would."""
    check_input_size(c.tile, c.depth, asker="--tile")
    for name in ("steps", "batch", "base", "checkpoint_every"):
        if getattr(c, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
    if c.val_every < 0:
        raise ValueError(f"--val-every must be 0 (validate only before and after) or a number of steps, got {c.val_every}")
    if not (c.w0 >= 0 and c.sigma > 0):
        raise ValueError(f"the weight map needs --w0 >= 0 and --sigma > 0 (pixels), got {c.w0} and {c.sigma}")
    if not c.elastic_sigma >= 0:
        raise ValueError(f"--elastic-sigma must be >= 0 pixels (0 turns the elastic deformation off), got {c.elastic_sigma}")
    if c.data is None and c.synthetic_images < 2:
        raise ValueError(f"--synthetic-images must be at least 2 (one to train on, one held out), got {c.synthetic_images}")
    if c.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {c.lr_schedule!r}")
    if c.lr_schedule == "cosine" and c.lr_drops:
        raise ValueError(f"--lr-drops {','.join(map(str, c.lr_drops))} is for --lr-schedule step; the cosine schedule "
                         "has no drops (leave out --lr-drops, or --lr-schedule)")
    if c.input_shift is not None and not all(abs(v) <= MAX_INPUT_SHIFT for v in c.input_shift):
        raise ValueError(f"--input-shift must be two offsets of at most {MAX_INPUT_SHIFT:g} px (or auto), "
                         f"got {','.join(map(str, c.input_shift))}")
    if not (c.malis >= 0 and c.malis_from >= 0):
        raise ValueError(f"--malis must be a weight >= 0 (0: none) and --malis-from a step >= 0, "
                         f"got {c.malis} and {c.malis_from}")
    if not 0 <= c.weight_average < 1:
        raise ValueError(f"--weight-average must be a decay in [0, 1) (0: no average; 0.9995 averages over ~2000 "
                         f"steps), got {c.weight_average}")
    if not (c.lr > 0 and 0 <= c.momentum < 1 and c.weight_decay >= 0 and 0 <= c.dropout < 1):
        raise ValueError(f"need lr > 0, 0 <= momentum < 1, weight decay >= 0, 0 <= dropout < 1; got "
                         f"{c.lr}, {c.momentum}, {c.weight_decay}, {c.dropout}")


@dataclass
class Data:
    """Training sampler and held-out validation images."""

    sampler: TrainingSampler
    val_images: np.ndarray
    val_labels: np.ndarray
    description: str
    split: dict


def load_data(c: TrainConfig) -> Data:
    """The synthetic data set (default) or the one at ``c.data``, split into train and validation."""
    if c.data is None:
        images, labels, instances = make_synthetic(c.synthetic_images, size=512, seed=c.seed)
        source, names = f"synthetic EM data ({c.synthetic_images} images of 512x512, seed {c.seed})", None
    else:
        dataset = load_dataset(c.data)
        images, labels, instances, names = dataset.images, dataset.labels, None, dataset.names
        source = f"{dataset.source} ({len(dataset)} slices)"
        if len(images) < 2:
            raise ValueError(f"--data {c.data} holds {len(images)} image(s); training needs at least 2 "
                             "(the last 20% are held out for validation)")
    # The last slices are held out (for ISBI's 25: train on 0-19, validate on 20-24), so
    # `python -m cunet.evaluate --slices 20-24` scores exactly the images training never saw.
    split = make_split(len(images), val_fraction=c.val_fraction, names=names)
    # The registration and the normalisation are part of the model: measured once, then kept.
    if c.input_shift is None:
        c.input_shift = list(label_offset(images[split.train], labels[split.train]))
    train_images = register(images[split.train], c.input_shift)
    if c.input_mean is None:
        c.input_mean, c.input_std = float(train_images.mean()), float(train_images.std())
    out = output_size(c.tile, c.depth)
    sampler = TrainingSampler(train_images, labels[split.train], in_size=c.tile, out_size=out,
                              augment=c.augment, seed=c.seed, config=AugmentConfig(elastic_sigma=c.elastic_sigma),
                              instances=None if instances is None else instances[split.train],
                              weight_kwargs=dict(w0=c.w0, sigma=c.sigma, class_balance=c.class_balance))
    description = (f"{source}: {len(split.train)} for training, {len(split.val)} held out "
                   f"(slices {split.val[0]}-{split.val[-1]})")
    if any(c.input_shift):
        description += f"; images registered to the labels' grid by ({c.input_shift[0]:.2f}, {c.input_shift[1]:.2f}) px"
    return Data(sampler, images[split.val], labels[split.val], description, json.loads(split.to_json()))


def validation_tile(model: UNet, data: Data) -> int:
    """The inference tile for validation: the smallest whose output covers a whole held-out image.

    The network is fully convolutional, so it may predict with a larger tile than it trains
    on; one tile per image keeps validation quick whatever the training tile.
    """
    return input_size_for_output(max(data.val_images.shape[1:]), model.depth)


def validate(model: UNet, data: Data) -> dict[str, float]:
    """Scores of the held-out images (overlap-tile prediction of each whole image).

    pixel_error, rand_error, v_rand, v_info: the ISBI 2012 challenge's, over the held-out
    stack with one threshold each (cunet.isbi; the warping error, the slow one, is left
    to python -m cunet.evaluate). iou_cell, dice_cell, seg: means over the images of the
    hard prediction's scores (cunet.metrics).
    """
    tile = validation_tile(model, data)
    probs = [predict_probabilities(model, image, tile) for image in data.val_images]
    stack = score_stack([p[1] for p in probs], list(data.val_labels), warping=False).scores
    hard = [(p.argmax(axis=0), label) for p, label in zip(probs, data.val_labels)]
    means = dict(iou_cell=np.mean([iou(pred, label, 1) for pred, label in hard]),
                 dice_cell=np.mean([dice(pred, label, 1) for pred, label in hard]),
                 seg=np.mean([seg(pred, label) for pred, label in hard]))
    return {**stack, **{k: float(v) for k, v in means.items()}}


class StopRequest:
    """Ctrl-C or SIGTERM asks the loop to stop after the current step (and save); a second one aborts."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: finishing this step and saving a checkpoint (again to abort)", file=sys.stderr)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Run:
    """One training run: model, optimiser, data, logs and checkpoints."""

    def __init__(self, config: TrainConfig, device: Device, out: Path, quiet: bool = False,
                 workers: int | None = None, sync_every: int | None = None, world: World | None = None):
        self.config, self.device, self.out, self.quiet = config, device, out, quiet
        # Data-parallel (cunet.scale.data_parallel): rank 0 writes everything, every rank trains.
        self.world, self.writes = world, world is None or world.rank == 0
        self.workers = default_workers(device) if workers is None else workers
        self.sync_every = (GPU_SYNC_EVERY if device.name == "cuda" else 1) if sync_every is None else sync_every
        if self.workers < 0 or self.sync_every < 1:
            raise ValueError(f"need --workers >= 0 and --sync-every >= 1, got {self.workers} and {self.sync_every}")
        self.data = load_data(config)
        self.model = UNet(1, 2, config.base, config.depth, config.dropout, seed=config.seed,
                          input_mean=config.input_mean, input_std=config.input_std,
                          input_shift=config.input_shift).to(device)
        self.optimizer = SGD(self.model.parameters(), config.lr, config.momentum, config.weight_decay)
        self.average = WeightAverage(self.model.parameters(), config.weight_average) if config.weight_average else None
        self.averager = None
        if world is not None:
            self.model.dropout.seed = rank_seed(config.seed, world.rank)
            self.averager = GradientAverager(world, self.model.parameters(), device)
        self.step = 0
        self.last_loss = None
        self.checkpoint_path = out / "checkpoint.npz"
        if self.writes:
            out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.checkpoint_path)  # what a SIGKILL during a save left

    @property
    def ranks(self) -> int:
        """How many data-parallel ranks train this run (1 without mpiexec)."""
        return 1 if self.world is None else self.world.size

    # ----------------------------------------------------------------- checkpoints
    def save(self) -> Path:
        """Write the checkpoint (atomically, on rank 0 only); refuses weights that are not finite."""
        params = self.model.state_dict()
        _check_finite(params.items(), self.step)
        if not self.writes:
            return self.checkpoint_path
        meta = dict(step=self.step, config=asdict(self.config), dropout_calls=self.model.dropout.calls,
                    loss=self.last_loss, split=self.data.split, ranks=self.ranks)
        averages = None if self.average is None else dict(zip(params, self.average.host_averages()))
        return save_checkpoint(self.checkpoint_path, params, self.optimizer.state_dict()["velocities"], meta, averages)

    def restore(self, path) -> None:
        """Load weights, momentum, step and random state from a checkpoint of this configuration."""
        ckpt = load_checkpoint(path)
        saved_ranks = ckpt.meta.get("ranks", 1)
        if saved_ranks != self.ranks:
            how = "without mpiexec" if saved_ranks == 1 else f"with mpiexec -n {saved_ranks}"
            raise CheckpointError(f"checkpoint {path} was written by a run of {saved_ranks} rank(s) and this is "
                                  f"{self.ranks}: each rank draws every {saved_ranks}-th batch of the sample stream, "
                                  f"so the run continues exactly only {how}")
        if "sampler" in ckpt.meta:
            raise CheckpointError(f"checkpoint {path} was written by an older cunet, whose sampler drew its tiles one "
                                  "after another; this one draws sample k from (seed, k) and cannot continue that run "
                                  "exactly. Start a new run.")
        try:
            self.model.load_state_dict(ckpt.params)
            self.optimizer.load_state_dict(dict(lr=self.config.lr, momentum=self.config.momentum,
                                                weight_decay=self.config.weight_decay, velocities=ckpt.velocities))
            if self.average is not None:
                if not ckpt.averages:
                    raise ValueError("it holds no weight average, and this run keeps one")
                self.average.load([ckpt.averages[name] for name, _ in self.model.named_parameters()])
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from exc
        self.model.dropout.calls = ckpt.meta["dropout_calls"]
        self.step, self.last_loss = ckpt.step, ckpt.meta.get("loss")
        if self.writes:
            cut_log_at(self.out / "log.jsonl", self.step)  # the steps after the checkpoint will run again

    # ----------------------------------------------------------------- training
    def train_step(self, batch):
        """One SGD step on ``batch`` (x, labels, weights on the host); returns the loss as a device array.

        Nothing here waits for the device: labels and weights are validated on the host and
        uploaded (weighted_cross_entropy), and the loss stays where it was computed until
        `_record` reads it back.
        """
        x, labels, weights = batch
        self.optimizer.lr = lr_at(self.config, self.step)
        logits = self.model(Tensor(self.device.to_device(self.model.normalise(x))))
        if self.config.malis > 0 and self.step >= self.config.malis_from:
            weights = weights + self.config.malis * self._malis_maps(logits, labels)
        loss = weighted_cross_entropy(logits, labels, weights)
        loss.backward()
        if self.averager is not None:  # every rank leaves with the ranks' mean gradient and loss
            mean_loss, self.stop_agreed = self.averager.average(loss.data, self.stop.requested)
            loss = Tensor(self.device.to_device(np.array([mean_loss], np.float32)))
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.average is not None:
            self.average.update(self.step + 1)
        if self.device.runtime is None:
            # Weights can overflow while the loss still looks fine: ReLU maps NaN to 0 (as
            # fmaxf does), so a NaN layer reads as a dead one. On cpu checking every step
            # is cheap; on a GPU the check runs before each checkpoint (see save).
            _check_finite(self.model.named_parameters(), self.step + 1)
        return loss.data

    def _malis_maps(self, logits: Tensor, labels: np.ndarray) -> np.ndarray:
        """The MALIS map of each tile of the batch, from this step's P(cell) (read back to the host)."""
        cell_prob = softmax(self.device.to_host(logits.data).astype(np.float64))[:, 1]
        return np.stack([malis_weights(p, l) for p, l in zip(cell_prob, labels)])

    def _record(self, pending: list, bar) -> None:
        """Read back the losses and times of the steps run since the last read; log and check them.

        Raises Diverged at the first non-finite loss: the steps after it ran, but nothing
        after the last checkpoint is saved, so the last good checkpoint stays as it was.
        """
        c = self.config
        for step, loss, timer, waited in pending:
            value = float(self.device.to_host(loss).reshape(-1)[0])
            if not math.isfinite(value):
                raise Diverged(f"the loss became {value} at step {step}")
            seconds = timer.seconds()
            self.last_loss = value
            self.log(dict(step=step, loss=value, lr=lr_at(c, step - 1), seconds=seconds, images_per_s=c.batch / seconds,
                          data_wait_s=waited))
            if bar is not None:
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{c.batch / seconds:.2f}")
                bar.update(1)
        pending.clear()

    def log(self, record: dict) -> None:
        """Append one record to log.jsonl, as one whole line (rank 0 only)."""
        if self.writes:
            append_record(self.out / "log.jsonl", record)

    def validate(self) -> dict[str, float]:
        """``validate`` on rank 0 (the weights are the same on every rank); {} elsewhere.

        With a weight average, the average is what is scored: what predict and evaluate use.
        """
        if not self.writes:
            return {}
        with self.inference_weights():
            return validate(self.model, self.data)

    def inference_weights(self):
        """A ``with`` block in which the model holds the weights to predict with (the average, if kept)."""
        return nullcontext() if self.average is None else self.average.swapped_in()

    def run(self) -> dict:
        """Train until ``config.steps``; returns a summary dict. Raises Diverged, saving nothing new."""
        c = self.config
        before = self.validate()
        self.log(dict(step=self.step, validation=before))
        stop = self.stop = StopRequest()
        self.stop_agreed = False  # with ranks: whether any rank asked to stop (all stop after the same step)
        bar = None if self.quiet else _progress(self.step, c.steps)
        pending = []  # (step, loss on the device, step timer, seconds waited for data) not yet read back
        shard = (0, 1) if self.world is None else (self.world.rank, self.world.size)
        try:
            with BatchStream(self.data.sampler, c.batch, first_step=self.step, workers=self.workers,
                             shard=shard) as batches:
                while self.step < c.steps and not (self.stop_agreed if self.world else stop.requested):
                    timer = self.device.step_timer()
                    timer.start()
                    loss = self.train_step(batches.next())
                    timer.stop()
                    self.step += 1
                    pending.append((self.step, loss, timer, batches.waited_s))
                    validate_now = c.val_every and self.step % c.val_every == 0 and self.step < c.steps
                    save_now = self.step % c.checkpoint_every == 0
                    if (len(pending) >= self.sync_every or validate_now or save_now or self.step == c.steps
                            or stop.requested):
                        self._record(pending, bar)
                    if validate_now:
                        self.log(dict(step=self.step, validation=self.validate()))
                    if save_now:
                        self.save()
        finally:
            stop.restore()
            if bar is not None:
                bar.close()
        self.save()
        after = self.validate()
        self.log(dict(step=self.step, validation=after))
        if self.writes:
            self._plot()
        interrupted = self.stop_agreed if self.world else stop.requested
        return dict(step=self.step, interrupted=interrupted, before=before, after=after)

    def _plot(self) -> None:
        """The learning curves and the held-out panel; a failed plot is a warning (the run is saved)."""
        try:
            plot_loss_curve(self.out / "log.jsonl", self.out / "loss.png")
            with self.inference_weights():
                plot_validation_panel(self.model, self.data, self.out / "validation.png")
        except (OSError, ValueError) as exc:
            print(f"warning: no plots ({exc})", file=sys.stderr)


def _check_finite(named_arrays, step: int) -> None:
    """Raise Diverged naming the first parameter with a NaN or infinity."""
    for name, value in named_arrays:
        data = value.data if hasattr(value, "creator") else value
        if not np.isfinite(data).all():
            raise Diverged(f"the weights became NaN or infinite by step {step} (first: {name})")


def _progress(start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)


def plot_loss_curve(log_path: Path, png_path: Path) -> Path:
    """The learning curves, from log.jsonl: the loss per step, and the validation errors over training time.

    Top: the weighted cross-entropy per step and its moving mean. Bottom: the held-out
    stack's challenge Rand and pixel errors (see ``validate``) against minutes of training
    (the steps' own seconds, summed: validation and checkpoints not counted).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    steps = np.array([r["step"] for r in records if "loss" in r])
    losses = np.array([r["loss"] for r in records if "loss" in r])
    minutes_at = dict(zip(steps, np.cumsum([r.get("seconds", 0.0) for r in records if "loss" in r]) / 60))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7))
    top.plot(steps, losses, lw=0.6, alpha=0.4, label="loss per step")
    if len(losses) >= 10:
        k = max(5, len(losses) // 20)
        top.plot(steps[k - 1:], np.convolve(losses, np.ones(k) / k, mode="valid"), lw=2, label=f"mean of {k} steps")
    top.set(xlabel="step", ylabel="weighted cross-entropy", title="cunet training", yscale="log")
    top.legend(loc="upper right")
    validations = [r for r in records if "validation" in r]
    for key, colour in (("rand_error", "tab:red"), ("pixel_error", "tab:blue")):
        points = [(minutes_at.get(r["step"], 0.0), r["validation"][key]) for r in validations if key in r["validation"]]
        if points:
            bottom.plot(*zip(*points), "o-", color=colour, label=f"validation {key.replace('_', ' ')}")
    bottom.set(xlabel="minutes of training", ylabel="error on the held-out stack (ISBI 2012 method)", ylim=(0, None))
    bottom.grid(alpha=0.3)
    if validations:
        bottom.legend(loc="upper right")
    fig.tight_layout()
    _save_figure(fig, png_path)
    return png_path


def plot_validation_panel(model: UNet, data: Data, png_path: Path, index: int = 0) -> Path:
    """One held-out image: input, truth, predicted cell probability, and where the prediction is wrong.

    The error map marks the pixels the hard prediction (argmax) gets wrong over the faded
    input: red where it says cell and the truth says membrane (a missed boundary, the kind
    that merges cells), blue where it says membrane and the truth says cell.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, label = data.val_images[index], data.val_labels[index]
    prob = predict_probabilities(model, image, validation_tile(model, data))
    pred = prob.argmax(axis=0)
    errors = np.repeat(0.35 + 0.5 * image[..., None], 3, axis=-1)  # the input, faded, where the prediction is right
    errors[(pred == 1) & (label == 0)] = (0.9, 0.1, 0.1)
    errors[(pred == 0) & (label == 1)] = (0.1, 0.35, 0.95)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    panels = ((image, "gray", "input (held out)"), (label, "gray", "truth (white = cell)"),
              (prob[1], "magma", "predicted P(cell)"), (errors, None, "wrong: red missed, blue extra"))
    for ax, (picture, cmap, title) in zip(axes, panels):
        ax.imshow(picture, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=14)
        ax.axis("off")
    fig.tight_layout()
    _save_figure(fig, png_path, dpi=60)  # four 512x512 pictures: ~250 KB at 60 dpi
    return png_path


def _save_figure(fig, png_path: Path, dpi: int = 100) -> None:
    """Write a figure whole: to a temporary name beside it, then renamed over it."""
    import matplotlib.pyplot as plt

    temporary = png_path.with_name(png_path.name + ".tmp.png")
    try:
        fig.savefig(temporary, dpi=dpi)
        os.replace(temporary, png_path)
    finally:
        plt.close(fig)
        temporary.unlink(missing_ok=True)


def config_for_resume(args: argparse.Namespace, checkpoint_path: str) -> TrainConfig:
    """The checkpoint's configuration, with the few settings a resumed run may change."""
    ckpt = load_checkpoint(checkpoint_path)
    unknown = sorted(set(ckpt.config) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise CheckpointError(f"checkpoint {checkpoint_path} has settings this cunet does not know ({', '.join(unknown)}): "
                              "it was written by a newer version; resume it with that version")
    saved = TrainConfig(**ckpt.config)
    for key, value in vars(args).items():
        if value is None or not hasattr(saved, key) or key == "notes":
            continue
        if key in RESUMABLE_OVERRIDES:
            setattr(saved, key, value)
        elif key == "data" and saved.data is not None and _same_path(value, saved.data):
            continue
        elif value != getattr(saved, key):
            raise CheckpointError(f"--{key.replace('_', '-')} {value} differs from the checkpoint's {getattr(saved, key)}; "
                                  f"a resumed run keeps its configuration (only --steps, --val-every, --checkpoint-every may change)")
    if saved.lr_schedule == "cosine" and saved.steps != ckpt.config["steps"]:
        raise CheckpointError(f"--steps {saved.steps} differs from the checkpoint's {ckpt.config['steps']}, and a cosine "
                              "schedule's length is its --steps: resuming it longer would change the learning rates "
                              f"already used (give --steps {ckpt.config['steps']})")
    if saved.steps < ckpt.step:
        raise CheckpointError(f"--steps {saved.steps} is below the checkpoint's step {ckpt.step}: a resumed run "
                              f"trains on to --steps (give --steps {ckpt.step} or more)")
    validate_config(saved)
    return saved


def _same_path(a: str, b: str) -> bool:
    """Whether two paths name the same file or folder (relative ones from here)."""
    try:
        return Path(a).resolve() == Path(b).resolve() or os.path.samefile(a, b)
    except OSError:
        return False


RUN_FILES = ("checkpoint.npz", "log.jsonl")


def check_new_output_folder(out: Path) -> None:
    """A new run's --out must not hold a run already: its checkpoint and log would be lost."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found:
        raise ValueError(f"--out {out} already holds a run ({', '.join(found)}); continue it with "
                         f"--resume {out / 'checkpoint.npz'}, or choose another --out")


def _describe_error(exc: BaseException) -> str:
    """An error for people: OSError's reason and file (``[Errno 28] ...`` says less)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def _last_checkpoint(run: "Run") -> str:
    path = run.checkpoint_path
    return f"{path} (step {load_checkpoint(path).step})" if path.exists() else "none yet"


def _format_metrics(m: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in m.items())


def main(argv=None) -> int:
    """Entry point; returns the process exit code. Under ``mpiexec -n R`` every rank runs it."""
    args = parse_args(argv)
    try:
        world = mpi_world()
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code = train_main(args, world)
    if world is not None and code not in (0, 130):
        world.abort(code)  # the other ranks may be waiting in an allreduce: end them too
    return code


def train_main(args: argparse.Namespace, world: World | None) -> int:
    """Set up, train and report; rank 0 of a data-parallel run prints and writes, the others only train."""
    say = print if world is None or world.rank == 0 else (lambda *a, **k: None)
    who = "" if world is None or world.rank == 0 else f" (rank {world.rank})"
    try:
        if world is not None and args.device in ("cuda", "auto"):
            use_local_gpu(world)
        device = get_device(args.device, kernels=args.kernels, math=args.math)
        if args.resume:
            config = config_for_resume(args, args.resume)
            out = Path(args.out) if args.out else Path(args.resume).parent
        else:
            config = resolve_config(args, device)
            out = Path(args.out) if args.out else Path("runs") / time.strftime("unet-%Y%m%d-%H%M%S")
            if world is None or world.rank == 0:
                check_new_output_folder(out)
        run = Run(config, device, out, quiet=args.quiet or who != "", workers=args.workers,
                  sync_every=args.sync_every, world=world)
        if args.resume:
            run.restore(args.resume)
    except (*USER_ERRORS, OSError) as exc:
        print(f"error{who}: {_describe_error(exc)}", file=sys.stderr)
        return 2
    c = config
    say(f"device: {device.describe()}")
    if device.runtime is None:   # the cpu: which convolution kernels it runs, and how it reuses memory
        from cunet.cpu import TRAINING_MALLOC, keep_freed_memory
        from cunet.cpu.conv2d import host_kernels_status
        say(host_kernels_status())
        if keep_freed_memory(**TRAINING_MALLOC):
            say("cpu memory: each step reuses the arrays the last one freed (glibc malloc: heap blocks up to "
                f"{TRAINING_MALLOC['mmap_threshold'] >> 20} MiB, freed memory kept)")
    if world is not None:
        say(f"data-parallel: {world.describe()}; rank r draws batches r, r + {world.size}, r + {2 * world.size}, ... "
            f"of the stream, so a step sees {world.size * c.batch} tiles; gradients averaged by one allreduce per step")
    for note in c.notes:
        say(f"chose {note}")
    say(f"model: U-Net base {c.base}, depth {c.depth}, tile {c.tile} -> {output_size(c.tile, c.depth)}, "
        f"{sum(p.data.size for p in run.model.parameters()) / 1e6:.2f} M parameters")
    drops = f" (x{LR_DROP_FACTOR} after step {', '.join(map(str, c.lr_drops))})" if c.lr_drops else ""
    drops += " (cosine schedule: down to ~0 at the last step)" if c.lr_schedule == "cosine" else ""
    average = f", weights averaged (decay {c.weight_average}: validated and saved for prediction)" if c.weight_average else ""
    say(f"training: {c.steps} steps (from step {run.step}), batch {c.batch}, lr {c.lr}{drops}, momentum {c.momentum}, "
        f"seed {c.seed}{average}")
    say(f"data: {run.data.description}; {run.workers or 'no'} sampler worker(s), losses read every "
        f"{run.sync_every} step(s)")
    say(f"output: {out}")
    t0 = time.perf_counter()
    try:
        result = run.run()
    except Diverged as exc:
        print(f"error{who}: {exc}; stopped without saving it. Last good checkpoint: {_last_checkpoint(run)}. "
              f"Try a lower --lr (now {c.lr}).", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a folder that went away: the last checkpoint is intact
        print(f"error{who}: {_describe_error(exc)}; the run stopped. Last good checkpoint: {_last_checkpoint(run)}; "
              f"continue with --resume {run.checkpoint_path}", file=sys.stderr)
        return 1
    minutes = (time.perf_counter() - t0) / 60
    say(f"validation before: {_format_metrics(result['before'])}")
    say(f"validation after:  {_format_metrics(result['after'])}")
    state = "interrupted at" if result["interrupted"] else "finished"
    say(f"{state} step {result['step']} in {minutes:.1f} min; checkpoint {run.checkpoint_path}; learning curves "
        f"{out / 'loss.png'}; a held-out image {out / 'validation.png'}")
    return 130 if result["interrupted"] else 0


def use_local_gpu(world: World) -> None:
    """Give each rank on a machine its own GPU (local rank modulo the GPUs there), before any CUDA work."""
    try:
        import cupy
    except ImportError:
        return  # no CuPy: --device auto becomes cpu, --device cuda reports why
    count = cupy.cuda.runtime.getDeviceCount()
    if count:
        cupy.cuda.Device(world.local_rank % count).use()


if __name__ == "__main__":
    sys.exit(main())

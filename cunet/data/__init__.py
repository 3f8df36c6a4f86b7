"""Host-side data for cunet: loaders, synthetic EM data, weight maps, augmentation,
training tiles and the inference tiling plan. NumPy/SciPy (and a little Numba) only.

Modules, in the order data flows through them:

* `loaders`   ISBI TIFF stacks and images/ + labels/ folders -> `Dataset`
* `splits`    train/validation split by slice index, saved as JSON
* `synthetic` EM-like images, labels and instance ids, generated from a seed
* `weights`   the paper's loss weight map w = w_c + w0 exp(-(d1 + d2)^2 / 2 sigma^2)
* `mirror`    the one mirrored-border convention everything shares
* `register`  the offset between images and their labels, and the resampling that removes it
* `augment`   elastic deformation, rotation, flips, shifts, grey values: one resampling
* `sampler`   random training tiles (input, label, weight): sample k is a function of (seed, k)
* `stream`    the batches of a run, drawn ahead by worker processes
* `tiling`    the overlap-tile plan for inference, tile extraction and stitching
* `gallery`   a PNG of synthetic (and optionally ISBI) samples with labels and weights
"""

from .augment import AugmentConfig, GeometricTransform, GreyTransform, augment, coarse_to_dense, draw_grey, \
    draw_transform, elastic_displacement, resample, source_coordinates
from .loaders import Dataset, load_dataset, load_folder, load_isbi
from .mirror import mirror_index, mirror_window
from .register import label_offset, register
from .sampler import TrainingSampler
from .stream import BatchStream
from .splits import Split, make_split
from .synthetic import make_synthetic
from .tiling import Tile, extract_tile, plan_tiles, stitch
from .weights import class_balance_weights, instances_from_labels, weight_map, weight_maps

__all__ = [
    "AugmentConfig", "BatchStream", "Dataset", "GeometricTransform", "GreyTransform", "Split", "Tile", "TrainingSampler",
    "augment", "class_balance_weights", "coarse_to_dense", "draw_grey", "draw_transform", "elastic_displacement",
    "extract_tile", "instances_from_labels", "label_offset", "load_dataset", "load_folder", "load_isbi", "make_split",
    "make_synthetic", "mirror_index", "mirror_window", "plan_tiles", "register", "resample", "source_coordinates", "stitch",
    "weight_map", "weight_maps",
]

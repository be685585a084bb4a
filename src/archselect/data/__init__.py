"""Datasets as in-memory uint8 tensors (ImageNet: as files decoded batch by batch), the NAS search split, and seeded
resumable batch loading."""
from .augment import augment_batch, crop_padding, cutout, normalize, random_crop_flip, resize
from .datasets import DATASETS, SPLITS, load_dataset
from .download import Checksum, download_file
from .folder_loader import FolderLoader
from .imagefolder import ImageFolder
from .idx import read_idx, write_idx
from .imageset import ImageSet
from .loader import Loader, derive_seed
from .paths import default_data_dir
from .splits import search_split
from .tensors import TensorLoader, from_batches

__all__ = [
    "DATASETS", "SPLITS", "Checksum", "FolderLoader", "ImageFolder", "ImageSet", "Loader", "augment_batch", "crop_padding", "cutout",
    "default_data_dir", "derive_seed", "download_file", "load_dataset", "normalize", "random_crop_flip",
    "read_idx", "resize", "search_split", "write_idx", "TensorLoader", "from_batches",
]

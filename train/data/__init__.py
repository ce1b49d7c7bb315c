"""Video re-ID data: dataset readers, a synthetic MARS-layout generator, clips, transforms, P×K sampling."""

from train.data.clip_dataset import ClipDataset
from train.data.registry import DATASETS, load_dataset
from train.data.sampler import PKSampler
from train.data.synthetic import generate_synthetic
from train.data.temporal import frame_indices
from train.data.tracklet import Tracklet, VideoDataset
from train.data.transforms import ClipTransform, build_transform

__all__ = [
    "DATASETS",
    "ClipDataset",
    "ClipTransform",
    "PKSampler",
    "Tracklet",
    "VideoDataset",
    "build_transform",
    "frame_indices",
    "generate_synthetic",
    "load_dataset",
]

"""The pair dataset: a source frame and a different target frame of the same ID group.

docs/method.md section 6: the target drives (its image is what is denoised, its shaded render is the
controller's hint, its caption the text); the source gives the identity (its cached ArcFace
embedding) and the appearance (its head crop, for CLIP vision). Groups of one image cannot make
a pair and are skipped with a warning.

One epoch visits every image of the pairable groups once as the target; its source is drawn
from the group's other images by a generator seeded with ``(seed, epoch, index)``, so pairs are
reproducible (and identical after a resume) whatever the worker layout.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..dataset.manifest import DatasetError, HP3Dataset, keypoints_array
from ..config import IDENTITY_DIMS
from ..head_encoder.identity import aligned_size, alignment_for
from ..head_encoder.head_crop import HEAD_CROP_SIZE, head_crop
from ..image_io import load_image
from .arcface_torch import grid_theta

log = logging.getLogger(__name__)


def dataset_resolution(dataset: HP3Dataset) -> int:
    """The side of the dataset's square training images (``settings.size``, else the first image's)."""
    size = dataset.settings.get("size")
    if isinstance(size, int) and size > 0:
        return size
    return int(load_image(dataset.items[0].image_file).shape[0])


@dataclass(frozen=True)
class Pair:
    target: int
    source: int


class PairDataset(Dataset):
    """Training samples (dicts of tensors; see :meth:`sample`) from an :class:`HP3Dataset`.

    Args:
        dataset: the loaded dataset folder.
        resolution: side of the training images in pixels (images and renders are resized to it
            when it differs from the dataset's).
        seed: the pairing seed.
        head_crop_scale: the source head crop's side over the face box's larger side.

    Raises:
        DatasetError: no group has two images.
    """

    def __init__(self, dataset: HP3Dataset, resolution: int | None = None, seed: int = 0,
                 head_crop_scale: float = 2.2) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0
        self.head_crop_scale = float(head_crop_scale)
        self.native = dataset_resolution(dataset)
        self.resolution = int(resolution or self.native)
        groups = dataset.pairable_groups()
        single = sorted(set(dataset.groups) - set(groups))
        if single:
            log.warning("%d ID group(s) have a single image and cannot make a (source, different target) "
                        "pair; skipped: %s", len(single), ", ".join(single[:10]) + (" ..." if len(single) > 10 else ""))
        if not groups:
            raise DatasetError(f"dataset '{dataset.root}' has no pairable ID group (every group has one image; "
                               f"training needs at least two images of the same person per group); add more "
                               f"images per identity folder and rerun build-dataset")
        self.groups = groups
        self.targets = [i for idx in groups.values() for i in idx]
        self.group_of = {i: dataset.items[i].record.group for i in self.targets}

    def __len__(self) -> int:
        return len(self.targets)

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's data loader at each epoch: new sources for the same targets."""
        self.epoch = int(epoch)

    def pair(self, index: int, epoch: int | None = None) -> Pair:
        """The (target, source) item indices of sample ``index`` in ``epoch``."""
        target = self.targets[index]
        others = [i for i in self.groups[self.group_of[target]] if i != target]
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, index])
        return Pair(target=target, source=others[int(rng.integers(len(others)))])

    def fixed_pairs(self, count: int) -> list[Pair]:
        """``count`` pairs from different groups where possible (first image -> second image):
        the validation pairs, the same in every run on the same dataset."""
        out = [Pair(target=idx[1], source=idx[0]) for idx in self.groups.values()]
        return out[:count]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.sample(self.pair(index))
        sample["index"] = index
        return sample

    def _load(self, path: Path) -> np.ndarray:
        image = load_image(path)
        if image.shape[:2] != (self.resolution, self.resolution):
            from PIL import Image
            image = np.asarray(Image.fromarray(image).resize((self.resolution, self.resolution),
                                                             Image.Resampling.BICUBIC))
        return image

    def sample(self, pair: Pair) -> dict[str, Any]:
        """One training sample.

        Returns:
            pixel_values: [3, S, S] float32 target image in -1..1 (the VAE's range);
            render: [3, S, S] float32 target's shaded render in 0..1 (the controller's hint);
            caption: the target's caption (str);
            align_theta: [2, 3] float32 ``affine_grid`` theta aligning the target's face to the
                identity backend's crop (ArcFace 112x112, dlib's 150x150 chip) from its cached
                keypoints (resolution-independent);
            source_arcface: [E] float32 the source's cached identity embedding (ArcFace 512, dlib 128);
            source_crop: [224, 224, 3] uint8 the source's head crop (CLIP vision's input).
        """
        items = self.dataset.items
        target, source = items[pair.target], items[pair.source]
        image = self._load(target.image_file)
        render = self._load(target.render_file)
        source_image = load_image(source.image_file)
        crop = head_crop(source_image, tuple(source.record.face_box), scale=self.head_crop_scale,
                         size=HEAD_CROP_SIZE)
        identity = self.dataset.identity
        size = aligned_size(identity)
        matrix = alignment_for(identity, keypoints_array(target.record))
        return {
            "pixel_values": torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0,
            "render": torch.from_numpy(render).permute(2, 0, 1).float() / 255.0,
            "caption": target.record.caption,
            "align_theta": grid_theta(matrix, (self.native, self.native), size),
            "source_arcface": _embedding(source.arcface, source.record.id, IDENTITY_DIMS[identity]),
            "source_crop": torch.from_numpy(np.ascontiguousarray(crop.image)),
        }


def _embedding(embedding: torch.Tensor, item: str, dim: int = 512) -> torch.Tensor:
    """The cached embedding as [dim] float32 (a wrong-sized one is a damaged dataset)."""
    e = embedding.reshape(-1).float()
    if e.numel() != dim:
        raise DatasetError(f"dataset item '{item}' has a {e.numel()}-d identity embedding, not the {dim}-d "
                           "its dataset.json's identity backend gives; rebuild the dataset")
    return e


class EpochShuffle(Sampler[int]):
    """A random order of ``n`` samples per epoch, seeded by ``(seed, epoch)`` (accelerate calls
    :meth:`set_epoch`), so a resumed run sees the same order as an uninterrupted one."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

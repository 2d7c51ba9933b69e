"""Datasets as lazy, index-addressable splits (see :mod:`pipeline.data.dataset`).

- :mod:`pipeline.data.sources`: where raw samples come from (digits in memory, torchvision's files in
  torchvision's layout, memory-mapped where the format allows);
- :mod:`pipeline.data.folder`: image folders at native resolution, their checks and their listing;
- :mod:`pipeline.data.dataset`: :class:`Split` and :class:`Dataset`, streamed fingerprints;
- :mod:`pipeline.data.registry`: names -> datasets, seeded stratified splits, label noise, limits.
"""
from pipeline.data.dataset import Dataset, Split
from pipeline.data.registry import (DATASETS, add_label_noise, check_data_root, check_dataset_name, load_dataset,
                                    open_dataset, store_dataset)

__all__ = ["DATASETS", "Dataset", "Split", "add_label_noise", "check_data_root", "check_dataset_name",
           "load_dataset", "open_dataset", "store_dataset"]

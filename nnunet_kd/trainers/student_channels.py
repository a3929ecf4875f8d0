"""A view of nnU-Net's preprocessed dataset class that yields only a student's channels.

Used for the final validation of student models when ``validate_from_raw_files`` is False (by default they are
validated from the raw files instead, :mod:`nnunet_kd.trainers.deployment_validation`): nnU-Net loads each
validation case through ``dataset_class.load_case`` and predicts it with ``self.network``; the view drops the
channels the student does not take. The remaining channels were cropped and normalised with all four.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def student_channel_dataset(dataset_class: type, channel_indices: Sequence[int]) -> type:
    """A subclass of ``dataset_class`` whose ``load_case`` returns only ``channel_indices`` of the image data."""
    indices = list(channel_indices)

    class StudentChannelDataset(dataset_class):  # type: ignore[misc, valid-type]
        def load_case(self, identifier):
            data, seg, seg_prev, properties = super().load_case(identifier)
            return np.ascontiguousarray(np.asarray(data[:])[indices]), seg, seg_prev, properties

    StudentChannelDataset.__name__ = f"StudentChannels{dataset_class.__name__}"
    StudentChannelDataset.__qualname__ = StudentChannelDataset.__name__
    return StudentChannelDataset

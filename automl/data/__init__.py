"""The data layer: readers, label statistics, group splits, the resize cache and demo datasets."""

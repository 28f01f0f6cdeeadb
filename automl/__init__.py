"""Segmentation AutoML driver: decides what runs, where and in which order."""

__version__ = "0.1.0"

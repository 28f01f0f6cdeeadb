"""What runs inside one trial, on one worker: training one segmentation model."""

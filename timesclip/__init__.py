"""TimesCLIP: a CLIP-based multimodal crop-yield predictor (the workload; never imports Ray)."""

__version__ = "0.1.0"

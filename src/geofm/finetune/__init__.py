"""Semantic segmentation on the Clay encoder: data (chips + labels + spatial splits), heads (FPN,
PixelShuffle), the Lightning module, training/evaluation and class-map prediction (``geofm finetune``)."""

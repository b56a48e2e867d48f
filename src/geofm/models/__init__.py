"""Embedding models: the Clay v1/v1.5 encoder (written here, official-checkpoint compatible), the
weights-free ``spectral`` encoder, and the registry that loads either behind one interface."""

from geofm.models.registry import Embedder, ModelSpec, get_model_spec, list_models, load_embedder

__all__ = ["Embedder", "ModelSpec", "get_model_spec", "list_models", "load_embedder"]

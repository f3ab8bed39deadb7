"""Model families. Importing this package registers them; a new family is one small file here."""

from runtime.engine.models import llama, mistral, qwen2, qwen3  # noqa: F401  (registration)
from runtime.engine.models.decoder import DecoderArgs, DecoderModel
from runtime.engine.models.registry import register_model, resolve_model_class, supported_architectures

__all__ = ["DecoderArgs", "DecoderModel", "register_model", "resolve_model_class", "supported_architectures"]

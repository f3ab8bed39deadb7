"""Strata's torch-native LLM engine: HF checkpoints, paged KV cache, continuous batching, quantization.

No Ray imports: it runs and is tested in one process; Serve wraps it (serve_apps/llm).
"""

from runtime.engine.config import EngineConfig
from runtime.engine.kv_package import KVPackage
from runtime.engine.llm import LLM
from runtime.engine.llm_engine import LLMEngine
from runtime.engine.outputs import CompletionOutput, RequestOutput
from runtime.engine.sampling_params import SamplingParams
from runtime.engine.structured_outputs import StructuredOutputsParams

__all__ = ["LLM", "CompletionOutput", "EngineConfig", "KVPackage", "LLMEngine", "RequestOutput", "SamplingParams",
           "StructuredOutputsParams"]

"""The Model API: OpenAI-compatible serving on Ray Serve, colocated or prefill/decode disaggregated.

    from serve_apps.llm import LLMServingArgs, build_pd_openai_app
    serve.run(build_pd_openai_app({"llm_configs": [{"model_source": "/models/tiny"}]}))
"""

from serve_apps.llm.builder import build_openai_app, build_pd_openai_app
from serve_apps.llm.config import KVTransferConfig, LLMConfig, LLMServingArgs

__all__ = ["KVTransferConfig", "LLMConfig", "LLMServingArgs", "build_openai_app", "build_pd_openai_app"]

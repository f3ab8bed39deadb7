"""Model API metrics (exported by Ray to Prometheus/Grafana), tagged by deployment and model."""

from __future__ import annotations

from typing import Any

from runtime import metrics

_TAGS = ("deployment", "model")
_BYTES_BOUNDARIES = [2**k for k in range(10, 34, 2)]  # 1 KiB .. 8 GiB


class ServeMetrics:
    """One per replica; call sites pass plain numbers, tags are bound once."""

    def __init__(self, *, deployment: str, model: str):
        self._tags = {"deployment": deployment, "model": model}
        self.ttft = metrics.histogram("strata_serve_ttft_s", "Time to first token", tag_keys=_TAGS)
        self.tpot = metrics.histogram(
            "strata_serve_tpot_s", "Mean time per output token after the first", tag_keys=_TAGS
        )
        self.itl = metrics.histogram("strata_serve_itl_s", "Inter-token latency", tag_keys=_TAGS)
        self.e2e = metrics.histogram("strata_serve_e2e_latency_s", "Request end-to-end latency", tag_keys=_TAGS)
        self.requests = metrics.counter(
            "strata_serve_requests_total", "Finished requests", tag_keys=(*_TAGS, "finish_reason")
        )
        self.prompt_tokens = metrics.counter("strata_serve_prompt_tokens_total", "Prompt tokens", tag_keys=_TAGS)
        self.generation_tokens = metrics.counter(
            "strata_serve_generation_tokens_total", "Generated tokens", tag_keys=_TAGS
        )
        self.num_running = metrics.gauge("strata_serve_num_running_count", "Running requests", tag_keys=_TAGS)
        self.num_waiting = metrics.gauge(
            "strata_serve_num_waiting_count", "Waiting requests (queue depth)", tag_keys=_TAGS
        )
        self.kv_cache_usage = metrics.gauge(
            "strata_serve_kv_cache_usage_ratio", "Fraction of KV blocks in use", tag_keys=_TAGS
        )
        self.prefix_hit = metrics.gauge(
            "strata_serve_prefix_cache_hit_ratio", "Prefix cache hit rate", tag_keys=_TAGS
        )
        self.kv_transfer_bytes = metrics.counter(
            "strata_serve_kv_transfer_bytes_total", "KV bytes handed from prefill to decode", tag_keys=_TAGS
        )
        self.kv_transfer_size = metrics.histogram(
            "strata_serve_kv_transfer_size_bytes", "KV package size", _BYTES_BOUNDARIES, tag_keys=_TAGS
        )
        self.kv_transfer_latency = metrics.histogram(
            "strata_serve_kv_transfer_s", "KV handoff: prefill done to package in decode", tag_keys=_TAGS
        )
        self.prefill_fallbacks = metrics.counter(
            "strata_serve_prefill_fallback_total", "Requests prefilled on decode after a remote failure",
            tag_keys=(*_TAGS, "reason"),
        )

    def observe_engine(self, stats: dict[str, Any]) -> None:
        self.num_running.set(stats.get("num_running", 0), tags=self._tags)
        self.num_waiting.set(stats.get("num_waiting", 0), tags=self._tags)
        self.kv_cache_usage.set(float(stats.get("kv_cache_usage", 0.0)), tags=self._tags)
        self.prefix_hit.set(float(stats.get("prefix_cache_hit_rate", 0.0)), tags=self._tags)

    def observe_request(
        self, *, ttft_s: float | None, e2e_s: float, num_prompt_tokens: int, num_output_tokens: int,
        finish_reason: str | None,
    ) -> None:
        if ttft_s is not None:
            self.ttft.observe(ttft_s, tags=self._tags)
            if num_output_tokens > 1:
                self.tpot.observe((e2e_s - ttft_s) / (num_output_tokens - 1), tags=self._tags)
        self.e2e.observe(e2e_s, tags=self._tags)
        self.prompt_tokens.inc(num_prompt_tokens, tags=self._tags)
        if num_output_tokens:
            self.generation_tokens.inc(num_output_tokens, tags=self._tags)
        self.requests.inc(1, tags={**self._tags, "finish_reason": finish_reason or "none"})

    def observe_itl(self, seconds: float) -> None:
        self.itl.observe(seconds, tags=self._tags)

    def observe_transfer(self, *, kv_bytes: int, handoff_s: float) -> None:
        self.kv_transfer_bytes.inc(kv_bytes, tags=self._tags)
        self.kv_transfer_size.observe(kv_bytes, tags=self._tags)
        self.kv_transfer_latency.observe(handoff_s, tags=self._tags)

    def observe_fallback(self, reason: str) -> None:
        self.prefill_fallbacks.inc(1, tags={**self._tags, "reason": reason})

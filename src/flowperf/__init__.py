"""flowperf: benchmark harness for multi-step LLM workflows on vLLM, with a cluster stress simulator."""

__version__ = "0.1.0"

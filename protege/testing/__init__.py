"""Test helpers shipped with protege (a fake OpenAI-compatible server), used by tests and benchmarks."""

"""Serving any student: batched prediction, closed-label scoring, the HTTP server and OpenAI's
chat API, the cascade to the teacher, the proxy, predict files and `--ray` blocks.

Heavy imports (torch, fastapi) stay inside the submodules so that importing
`protege.serve` is cheap.
"""

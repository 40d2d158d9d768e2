"""Serving the student: batched prediction, closed-label scoring, CTranslate2 export, HTTP server.

Heavy imports (torch, ctranslate2, fastapi) stay inside the submodules so that importing
`protege.serve` is cheap.
"""

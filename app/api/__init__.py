"""`dlvm ui`: the registry API (FastAPI, OpenAPI at /openapi.json) and the ops dashboard."""

"""The OpenAI-compatible server (``textdiffusion serve``): the step-batching scheduler
(scheduler.py, torch only), request parsing and checking (requests.py, no torch) and the HTTP
app (app.py: FastAPI + uvicorn, the ``serve`` extra)."""

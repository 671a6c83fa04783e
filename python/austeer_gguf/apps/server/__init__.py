"""`python -m austeer_gguf serve MODEL`: an OpenAI-compatible server with per-request steering, and the desktop
assistant page at `/`.

Built on llama-cpp-python's own server stack (its `server` extra: FastAPI, uvicorn, sse-starlette, and its
request types, error formatting and threadpool helpers), hosting one `SteeredLlama`. The package, by concern:
`types` (the request bodies), `service` (the model, its profile library, the default, and each request's
steering made into one `SteeringSetting`), `guards` (what is refused before any token is decoded, body limits,
errors in the OpenAI format), `routes` (the HTTP routes and the static files of the page, `static/`).

- `POST /v1/chat/completions`, `POST /v1/completions` (streaming by server-sent events), `GET /v1/models`;
  a request may carry a `steering` object (OpenAI clients send it with `extra_body`):
  `{"profiles": {"polite": 1.0}, "enabled": true, "strength": 1.0, "apply": "all" | "generation",
  "profile": {...an inline profile...}}`; fields left out take the server default. Every response (every
  chunk of a stream) says the setting it ran under in `steering`.
- `GET /v1/steering` lists the profiles (embedded and loaded) and the default; `PUT /v1/steering` sets the
  default; `POST /v1/steering/profiles` adds a validated profile.

One completion runs at a time (the model has one KV cache), under its request's setting handed to it as a
value (`llm.steering.using`); a request holds the model from its first to its last token, and the prefix cache
is reused only where it was computed under the setting a request needs (SteeredLlama's KV record). A client
that disconnects mid-stream stops its generation and frees the model. Bad requests get a 4xx whose message says
what to do.
"""

from .routes import create_app, serve
from .service import SteeringServer, open_server

__all__ = ["SteeringServer", "create_app", "open_server", "serve"]

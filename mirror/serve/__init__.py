"""`mirror serve`: one Hub-compatible, read-only endpoint over a folder of verified bundles.

`HF_ENDPOINT=http://mirror.internal:8080` makes every Hugging Face client (huggingface_hub,
transformers, sentence-transformers, datasets, `hf download`) fetch from it unchanged. Modules:
`catalogue` (what is served, verified and watched), `state` (verdicts remembered across restarts),
`spans` (a file's bytes at its offset in the bundle), `hubapi` (the Hub's JSON shapes), `app` (the
routes), `auth` (tokens, throttle), `httpd` (the HTTP/1.1 front), `metrics` (/metrics and the access log),
`server` (start-up).
"""

"""The project's HTTP/1.1 library: bare asyncio protocols parsed by llhttp (httptools).

``server`` takes requests from apps (and serves the admin routes), ``client`` is the pooled
upstream connection, ``fetch`` makes one-shot calls (IdPs, NCANode), ``wire`` holds what both
directions share. It knows nothing of tokens, upstreams or config.
"""

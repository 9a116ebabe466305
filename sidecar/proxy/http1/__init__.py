"""HTTP/1.1 on bare asyncio protocols with llhttp: the proxy's hot path, both directions."""

"""The request path: listener → router → upstream pipeline → client."""

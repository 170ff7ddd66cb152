"""waconnect's HTTP API (django-ninja at /api/v1/) and its tokens."""

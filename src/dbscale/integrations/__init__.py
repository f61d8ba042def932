"""Integrations of dbscale with web frameworks and the HTTP edge (CDN / reverse proxy)."""

"""Fake providers: real HTTP (and SMTP) servers on free ports that answer the way the
providers do (docs/providers.md), with switches to inject each error
code, latency and outages. Only the system's edge is faked; Herald's own code runs
for real against them."""

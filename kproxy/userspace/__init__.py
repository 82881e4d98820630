"""userspace data path: the daemon itself proxies service traffic (asyncio)."""

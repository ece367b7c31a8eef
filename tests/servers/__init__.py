"""Local servers speaking each provider's protocol, used by the provider contract suite and the
integration tests. Each is registered under (channel, provider name) in `SERVERS`."""

"""What a connection becomes after its HTTP request: a WebSocket, an event stream, a parked
long poll. Each is an asyncio.Protocol that owns its transport and nothing else."""

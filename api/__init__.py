"""FastAPI adapters: the room WebSocket, health checks and metrics."""

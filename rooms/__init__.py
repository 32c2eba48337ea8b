"""The domain of collab pad: a pure, synchronous document core plus the room registry."""

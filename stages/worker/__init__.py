"""The warm worker: the client that hands a pipeline command over, and the server that forks a child per command."""

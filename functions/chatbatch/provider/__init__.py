"""The chat API over HTTP: the client, SSE streams, retry timing and error classification."""

"""chatbatch: push large volumes of chat-completion work through OpenAI-compatible APIs."""

__version__ = "0.1.0"

"""The chatbatch CDK app: one construct per concern, composed by ``stack.ChatbatchStack``.

``outputs`` holds the stack's output keys as plain strings (no CDK import), so the CLI can
find a deployment without loading CDK.
"""

"""The user's side of a deployment: submit, find the stack, read costs. Never in the Lambda."""

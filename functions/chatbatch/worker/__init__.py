"""What runs in the Lambda: the thin handler and the pipeline of one job."""

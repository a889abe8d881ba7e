"""The batch route's worker side (issue 17; docs/batch-route.md): the **gatherer**, a
function on a schedule that takes the jobs routed to the providers' batch APIs off their
queue, puts them in provider batches (``gather``), finds again a provider batch a crashed
run created (``recover``), and stores each ended batch's answers as the synchronous
worker stores its own, settling the budget and the batch counters (``ingest``).
``handler`` runs one pass of all three; ``part_files`` keeps each part's lines in S3;
``clients`` holds one batch API client per provider.
"""

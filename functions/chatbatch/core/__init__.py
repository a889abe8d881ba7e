"""What every part shares: config, the job formats, prices, resource names, the metric contract."""

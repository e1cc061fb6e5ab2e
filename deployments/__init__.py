"""Where things run: compute profiles (task runners) and Prefect deployments."""

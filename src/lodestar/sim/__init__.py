"""The discrete-event cluster simulator: scenarios, the runner, results."""

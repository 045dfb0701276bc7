"""The learned router: features, online reward predictors, rewards, the `lodestar` policy, persistence."""

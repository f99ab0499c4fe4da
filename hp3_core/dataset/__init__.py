"""The HP3 training set: built from ID groups, read by the trainer and the evaluation."""

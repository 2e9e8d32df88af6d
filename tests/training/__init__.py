"""Tests of the training task (attention_lab.training, attention_lab.config, attention_lab.cli.train)."""

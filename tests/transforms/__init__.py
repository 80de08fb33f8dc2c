"""Tests of svdharm_cli.transforms."""

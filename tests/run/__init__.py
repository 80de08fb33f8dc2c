"""Tests of svdharm_cli.run."""

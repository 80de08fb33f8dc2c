"""Tests of svdharm_cli.core."""

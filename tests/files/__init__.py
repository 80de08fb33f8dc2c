"""Tests of svdharm_cli.files."""

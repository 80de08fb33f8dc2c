"""Tests of svdharm_cli.evidence."""

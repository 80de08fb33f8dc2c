"""Tests of svdharm_cli.ui."""

"""End-to-end tests of the svdharm command: a user's runs over real and generated files."""

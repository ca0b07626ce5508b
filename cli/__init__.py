"""Command-line front end (`graphprune`)."""

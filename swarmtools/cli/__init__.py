"""Thin click front-ends: parse options, call the library, print, exit."""

"""Thin Ray shells over ``services``; the only package that calls ``ray.*`` (none yet)."""

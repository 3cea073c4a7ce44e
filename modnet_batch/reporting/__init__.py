"""Reporting: terminal tables, run comparison and the HTML report."""

"""Reads run directories from disk; plots (matplotlib) and the HTML / Markdown report."""

"""Data: read files, turn rows into conversations, report what is wrong and where."""
